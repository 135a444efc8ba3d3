"""Frozen features of every image a k-shot task with an unlabelled pile can use, per shared
set, for in-process method studies (issue 30): written once to an ``.npz`` per set.

    python benchmarks/unlabelled_features.py [--sets ...] [--out /tmp/unlabelled-features]
        [--pool 200]

Per set: the test images of ``kshot.pools`` (50 per class, seed 12345), and up to
``--pool + 20`` other images per class (the candidates for labelled images and the pile),
with the tapped default backbone (the final features are its first 1280 columns), the
ImageNet classifier's weights, and the domain gap's level as ``train`` measures it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common import parser
from kshot import SETS, pools

from headstart.backbone.build import load_backbone
from headstart.fit.settings import FitSettings
from headstart.fit.domain import domain_gap


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--sets", nargs="+", default=[*SETS, "fashion_mnist"])
    ap.add_argument("--out", type=Path, default=Path("/tmp/unlabelled-features"))
    ap.add_argument("--pool", type=int, default=200)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    plain = load_backbone("efficientnet_lite0")
    for name in args.sets:
        classes, cand, test = pools(args.datasets, name)
        rng = np.random.default_rng(7)
        cand = {c: [fs[i] for i in sorted(rng.permutation(len(fs))[:args.pool + 20])]
                for c, fs in cand.items()}
        paths = [str(f) for c in classes for f in cand[c]] + \
                [str(f) for c in classes for f in test[c]]
        labels = [c for c in classes for _ in cand[c]] + [c for c in classes for _ in test[c]]
        is_test = np.array([False] * sum(map(len, cand.values())) + [True] * sum(
            map(len, test.values())))
        tapped = plain.with_taps()
        feats = FitSettings(head="linear").extract(tapped, paths, progress=False)
        assert len(feats.index) == len(paths), name
        X = feats.X
        gap = domain_gap(tapped, X[~is_test])
        w, b = plain.imagenet_head
        y = np.array([classes.index(c) for c in labels])
        np.savez(args.out / f"{name}.npz", X=X.astype(np.float32), y=y, is_test=is_test,
                 classes=np.array(classes), widths=np.array(tapped.tap_widths),
                 gap=gap.level or "", w=np.asarray(w, np.float32),
                 b=np.asarray(b, np.float32), paths=np.array(paths))
        print(name, X.shape, gap.level, flush=True)


if __name__ == "__main__":
    main()
