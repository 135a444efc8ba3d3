from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from headstart.backbone.build import Preprocess
from headstart.fit.cached import cached_run, split_backbone
from headstart.fit.training import cpu_flags, use_bfloat16
from headstart.fit.finetune import FinetuneConfig, _chosen_stages, finetune

from .conftest import EXAMPLES


def _unfreeze(model, mode: str) -> set[str]:
    names = {n for _, ns in _chosen_stages(model, mode) for n in ns}
    for name, p in model.named_parameters():
        p.requires_grad_(name in names)
    return names


def _images():
    """The shipped safari images, elephants and giraffes alternating: ``(paths, labels)``."""
    e, g = (sorted((EXAMPLES / "train" / c).glob("*.jpg")) for c in ("elephant", "giraffe"))
    paths = [str(p) for pair in zip(e, g) for p in pair]
    return paths, [i % 2 for i in range(len(paths))]


def test_split_gives_the_same_features_and_only_the_top_trains(backbone):
    model = copy.deepcopy(backbone.model)
    trainable = _unfreeze(model, "last-3")
    trunk, top = split_backbone(model, 64)
    assert not any(p.requires_grad for p in trunk.parameters())
    assert {id(p) for p in top.parameters() if p.requires_grad} == \
        {id(p) for n, p in model.named_parameters() if n in trainable}
    x = torch.randn(3, 3, 96, 96)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(top(trunk(x)), model(x), atol=1e-4)
    # with everything trainable the trunk is empty: the cache holds the decoded inputs
    _unfreeze(model, "all")
    trunk, _ = split_backbone(model, 64)
    assert len(trunk) == 0


def test_a_model_that_is_not_a_chain_is_not_split():
    import timm

    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0,
                            img_size=32, patch_size=8)
    for p in vit.blocks[-1].parameters():
        p.requires_grad_(True)
    assert split_backbone(vit, 32) is None  # the position embedding is not a module


def test_cache_holds_each_view_once_and_in_half_precision(backbone):
    model = copy.deepcopy(backbone.model)
    _unfreeze(model, "last-2")
    paths, labels = _images()
    pre = Preprocess(64, backbone.preprocess.crop_pct, backbone.preprocess.interpolation,
                     backbone.preprocess.mean, backbone.preprocess.std)
    from headstart.fit.training import augmenter

    run = cached_run(model, pre, (paths[:8], labels[:8]), (paths[8:], labels[8:]), "light",
                     4, augmenter(pre, "light"))
    assert run is not None and run.views >= 2
    acts, _ = run.train_dl.dataset.acts, run.val_dl.dataset.acts
    assert acts.dtype == torch.float16 and acts.shape[:2] == (8, run.views)
    assert not torch.equal(acts[0, 0], acts[0, 1])  # augmented views differ
    plain = cached_run(model, pre, (paths[:8], labels[:8]), (paths[8:], labels[8:]), "none",
                       4, None)
    assert plain.views == 1
    x, y = next(iter(plain.val_dl))
    assert x.shape[0] == min(8, len(paths) - 8) and y.tolist() == labels[8:8 + len(y)]


def test_cached_finetune_trains_the_top_only_and_reports_honest_accuracy(backbone, tmp_path):
    model = copy.deepcopy(backbone.model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    paths, labels = _images()
    pre = Preprocess(64, backbone.preprocess.crop_pct, backbone.preprocess.interpolation,
                     backbone.preprocess.mean, backbone.preprocess.std)
    d, k = int(model.num_features), 2
    head = (np.zeros((k, d), np.float32), np.zeros(k, np.float32))
    cfg = FinetuneConfig(mode="last-2", max_epochs=2, augment="none", batch_size=4,
                         num_workers=0, restore_best=False)
    res = finetune(model, pre, (paths[:10], labels[:10]), (paths[10:], labels[10:]), head, cfg,
                   tmp_path / "ft")
    trained = {n for _, ns in _chosen_stages(res.model, "last-2") for n in ns}
    after = dict(res.model.named_parameters())
    assert any(not torch.equal(before[n], after[n]) for n in trained)
    assert all(torch.equal(before[n], after[n]) for n in before if n not in trained)
    assert all(p.is_contiguous() for p in res.model.parameters())  # safetensors needs it
    assert len(res.history) == 2 and 0.0 <= res.val_accuracy <= 1.0
    # restore_best=False: the last epoch is kept and reported, not the best one
    assert res.best_epoch == 2 and res.val_accuracy == res.history[-1]["val_accuracy"]


def test_bfloat16_only_where_the_cpu_has_the_units(monkeypatch):
    monkeypatch.delenv("HEADSTART_BF16", raising=False)
    assert use_bfloat16() == bool({"amx_bf16", "avx512_bf16"} & cpu_flags())
    monkeypatch.setenv("HEADSTART_BF16", "0")
    assert use_bfloat16() is False
    monkeypatch.setenv("HEADSTART_BF16", "1")
    assert use_bfloat16() is True


@pytest.mark.slow
def test_forced_bfloat16_still_trains(backbone, tmp_path, monkeypatch):
    monkeypatch.setenv("HEADSTART_BF16", "1")
    model = copy.deepcopy(backbone.model)
    paths, labels = _images()
    pre = Preprocess(32, 1.0, "bilinear", backbone.preprocess.mean, backbone.preprocess.std)
    d = int(model.num_features)
    res = finetune(model, pre, (paths[:6], labels[:6]), (paths[6:10], labels[6:10]),
                   (np.zeros((2, d), np.float32), np.zeros(2, np.float32)),
                   FinetuneConfig(mode="last-1", max_epochs=1, augment="none", batch_size=6,
                                  num_workers=0), tmp_path / "ft")
    assert np.isfinite(res.history[0]["train_loss"])
    assert all(p.dtype == torch.float32 for p in res.model.parameters())


def test_inference_views_are_computed_once_per_process(backbone):
    from headstart.fit import cached

    model = copy.deepcopy(backbone.model)
    _unfreeze(model, "last-1")
    paths, labels = _images()
    pre = Preprocess(48, 1.0, "bilinear", backbone.preprocess.mean, backbone.preprocess.std)
    first = cached_run(model, pre, (paths[:6], labels[:6]), (paths[6:9], labels[6:9]), "none",
                       4, None)
    size = cached._MEMO.bytes
    assert size > 0
    again = cached_run(model, pre, (paths[:3], labels[:3]), (paths[6:9], labels[6:9]), "none",
                       4, None)  # a subset of the same images: nothing new computed
    assert cached._MEMO.bytes == size
    assert torch.equal(again.train_dl.dataset.acts, first.train_dl.dataset.acts[:3])
    # other weights, other activations
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    cached_run(model, pre, (paths[:3], labels[:3]), (paths[6:9], labels[6:9]), "none", 4, None)
    assert cached._MEMO.bytes > size
