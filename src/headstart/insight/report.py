"""An honest evaluation report: one self-contained HTML file (plots and thumbnails embedded,
no network), plus ``metrics.json`` beside it.

Sections: data health (leakage first: held-out images that are copies of training images
inflate accuracy; then unusable files, duplicates, folder problems); accuracy with a 95%
Wilson score interval; per-class precision, recall,
F1, support; confusion matrix (counts and row-normalised); reliability diagram and expected
calibration error before and after temperature scaling; "unknown" rejections; a gallery of
the misclassified and the least confident images; training curves (when the model has a
``metrics.csv``); a dataset summary.
"""

from __future__ import annotations

import base64
import html
import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..insight.charts import BLUE, GREEN, ORANGE, confusion_svg, lines_svg, side_by_side
from ..io.files import check_output
from ..fit.calibration import (calibration_change, expected_calibration_error, reliability,
                               softmax)
from ..io.decode import thumbnail_jpeg
from ..insight.evaluate import scored_metrics, wilson_ci
from ..fit.finetune import read_metrics_csv
from ..insight.review import Review

__all__ = ["write_model_report", "write_report", "write_review_page"]

STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
         "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px}"
         ".big{font-size:2em;margin:0}.big span{font-size:.45em;color:#555}"
         ".grid{display:flex;flex-wrap:wrap;gap:10px}figure{margin:0;width:130px;"
         "font-size:12px}figure img{max-width:112px;max-height:112px}img{max-width:100%}"
         ".bad{color:#b00020}.good{color:#1b5e20}.muted{color:#666}")


def _b64(svg: str) -> str:
    return base64.b64encode(svg.encode()).decode()


def _confusion(cm: np.ndarray, classes: list[str]) -> str:
    return _b64(confusion_svg(cm, classes))


def _reliability(y: np.ndarray, logits: np.ndarray, t: float) -> str:
    series = []
    for temp, name, colour in ((1.0, "before", ORANGE), (t, f"after (T={t:.2f})", BLUE)):
        proba = softmax(logits, temp)
        r = reliability(proba, y)
        ece = expected_calibration_error(proba, y)
        series.append((f"{name}: off by {ece:.1%} on average", r["confidence"], r["accuracy"],
                       colour, ""))
    return _b64(lines_svg(series, "confidence", "accuracy", (0.0, 1.0), (0.0, 1.02),
                          diagonal=True, label="reliability diagram"))


def _bins(proba: np.ndarray, y: np.ndarray) -> str:
    """The calibrated reliability bins as a table: how many images each point stands on."""
    r = reliability(proba, y)
    rows = "".join(f"<tr><td>{lo:.0%}-{hi:.0%}</td><td>{n}</td><td>{c:.1%}</td>"
                   f"<td>{a:.1%}</td></tr>" for lo, hi, n, c, a in zip(
                       r["lower"], r["upper"], r["count"], r["confidence"], r["accuracy"]))
    return ('<table class="bins"><tr><th>confidence bin</th><th>images</th>'
            f'<th>mean confidence</th><th>accuracy</th></tr>{rows}</table>')


def _curves(rows: list[dict[str, float]]) -> str:
    """Loss and accuracy per epoch, training (augmented images) and validation; a column a
    model written before it was recorded lacks is left out."""
    epochs = [r["epoch"] for r in rows]

    def series(kind: str) -> list[tuple[str, list[float], list[float], str, str]]:
        out = []
        for split, colour, dash in (("train", BLUE, ""), ("val", GREEN, "4 3")):
            ys = [float(r.get(f"{split}_{kind}", float("nan"))) for r in rows]
            if any(y == y for y in ys):
                out.append((f"{'training' if split == 'train' else 'validation'} {kind}",
                            epochs, ys, colour, dash))
        return out
    loss = lines_svg(series("loss"), "epoch", "loss", label="loss per epoch", whole_x=True)
    acc = lines_svg(series("accuracy"), "epoch", "accuracy", ylim=(0.0, 1.02),
                    label="accuracy per epoch", whole_x=True)
    return _b64(side_by_side(loss, acc, label="training curves"))


def _thumb(source: Any) -> str:
    data = thumbnail_jpeg(source, 112)
    return base64.b64encode(data).decode() if data else ""


def _health_section(h: dict[str, Any]) -> str:
    """HTML of the data health findings (:meth:`headstart.fit.health.Health.to_dict`)."""
    e = html.escape

    def groups(items: list[dict[str, Any]]) -> str:
        return "".join("<li>" + (" = ".join(f"{e(m['path'])} <small>[{e(m['split'])}"
                                            + (f"/{e(m['label'])}" if m["label"] else "")
                                            + "]</small>" for m in g["members"]))
                       + f" <small>({g['kind']})</small></li>" for g in items)
    parts = [f'<p class="{"bad" if h["problems"] else "good"}">{e(h["summary"])}</p>']
    if h["leakage"]:
        parts.append(f'<p class="bad"><b>Leakage:</b> {h["leaked_images"]} held-out image(s) '
                     "are copies of images in another split (or of the model's training "
                     "images); the accuracy below is inflated.</p>"
                     f"<ul>{groups(h['leakage'])}</ul>")
    for key, title in (("conflicts", "Filed under two classes"),
                       ("duplicates", "Duplicates within a class")):
        if h[key]:
            parts.append(f"<h3>{title}</h3><ul>{groups(h[key])}</ul>")
    if h["unusable"]:
        parts.append("<h3>Unusable files (left out)</h3><ul>" + "".join(
            f"<li>{e(u['path'])}: {e(u['reason'])}</li>" for u in h["unusable"]) + "</ul>")
    if h["folders"]:
        parts.append("<h3>Folders</h3><ul>" + "".join(
            f"<li>{e(f['path'])}: {e(f['problem'])}</li>" for f in h["folders"]) + "</ul>")
    return '<section id="health"><h2>Data health</h2>' + "".join(parts) + "</section>"


def write_report(out: str | os.PathLike, classes: list[str], sources: Sequence[Any],
                 y_true: np.ndarray, logits: np.ndarray, temperature: float,
                 rejected: np.ndarray | None = None, model_dir: str | os.PathLike | None = None,
                 dataset: dict[str, Any] | None = None, title: str = "headstart evaluation",
                 health: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``out`` (HTML) and ``metrics.json`` beside it (the metrics, and ``images``:
    each evaluated image's path, label, prediction and probability); returns the metrics.

    Args:
        sources: the N evaluated images (paths or PIL images), ``y_true`` ``(N,)`` their
            class indices, ``logits`` ``(N, K)`` the head's outputs before calibration.
        rejected: ``(N,)`` which predictions were ``unknown``.
        model_dir: where to find ``metrics.csv`` for the training curves.
        dataset: extra facts for the dataset summary (name -> value).
        health: data health findings (``Health.to_dict()``), shown first.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for path in (out, out.parent / "metrics.json"):  # both, before writing either
        check_output(path, "out")
    y_true = np.asarray(y_true, dtype=int)
    m = scored_metrics(y_true, logits, temperature, classes, rejected)
    proba = softmax(logits, temperature)
    parts = [f"<h1>{html.escape(title)}</h1>", _accuracy_section(m)]
    if health:
        parts.insert(1, _health_section(health))
    parts += [_per_class_section(m), _confusion_section(m, classes),
              _calibration_section(m, y_true, logits, temperature, proba)]
    if "unknown" in m:
        parts.append(_unknown_section(m))
    parts.append(_gallery_section(sources, classes, y_true, proba))
    history = read_metrics_csv(Path(model_dir) / "metrics.csv") if model_dir else []
    if history:
        parts.append('<section id="curves"><h2>Training curves</h2>'
                     f'<img alt="training curves" src="data:image/svg+xml;base64,'
                     f'{_curves(history)}"></section>')
    parts.append(_dataset_section(m, classes, dataset))
    _page(out, title, parts)
    rows = _image_rows(sources, classes, y_true, proba, rejected)
    (out.parent / "metrics.json").write_text(json.dumps({**m, "images": rows}, indent=1)
                                             + "\n")
    return m


def _image_rows(sources: Sequence[Any], classes: list[str], y_true: np.ndarray,
                proba: np.ndarray, rejected: np.ndarray | None) -> list[dict[str, Any]]:
    """One row per evaluated image given by its path (``path``, ``label``, ``predicted``,
    ``probability``, ``unknown``): what a confusion-matrix cell opens."""
    pred = proba.argmax(axis=1)
    return [{"path": str(src), "label": classes[int(y)], "predicted": classes[int(p)],
             "probability": round(float(q.max()), 4),
             "unknown": bool(rejected[i]) if rejected is not None else False}
            for i, (src, y, p, q) in enumerate(zip(sources, y_true, pred, proba))
            if isinstance(src, (str, os.PathLike))]


def _accuracy_section(m: dict[str, Any]) -> str:
    """HTML of the accuracy, its 95% Wilson interval and the macro F1 of metrics ``m``."""
    lo, hi = m["accuracy_ci95"]
    return ('<section id="summary"><h2>Accuracy</h2>'
            f'<p class="big">{m["accuracy"]:.1%} <span>95% CI {lo:.1%} to {hi:.1%} '
            f'(Wilson score interval, {m["n_images"]} images)</span></p>'
            f'<p>macro F1 {m["macro_f1"]:.3f}</p></section>')


def _per_class_section(m: dict[str, Any]) -> str:
    """HTML table of each class's precision, recall with its 95% Wilson interval, F1 and
    support."""
    e = html.escape

    def recall(r: dict[str, Any]) -> str:
        lo, hi = wilson_ci(round(r["recall"] * r["support"]), r["support"]) \
            if r["support"] else (0.0, 1.0)
        return f"{r['recall']:.1%} <span class=\"muted\">({lo:.0%}-{hi:.0%})</span>"
    rows = "".join(f"<tr><td>{e(c)}</td><td>{r['precision']:.1%}</td><td>{recall(r)}"
                   f"</td><td>{r['f1']:.3f}</td><td>{r['support']}</td></tr>"
                   for c, r in m["per_class"].items())
    return ('<section id="per-class"><h2>Per class</h2><p>Recall: the share of each class\'s '
            'images the model gets right, with its 95% interval (Wilson; wide for few '
            'images). Precision: the share of the images it calls that class that are.</p>'
            '<table><tr><th>class</th><th>precision</th><th>recall (95% interval)</th>'
            f'<th>F1</th><th>images</th></tr>{rows}</table></section>')


def _confusion_section(m: dict[str, Any], classes: list[str]) -> str:
    """HTML of the ``(K, K)`` confusion matrix as an embedded SVG."""
    cm = np.asarray(m["confusion_matrix"])
    return ('<section id="confusion"><h2>Confusion matrix</h2>'
            f'<img alt="confusion matrix" src="data:image/svg+xml;base64,'
            f'{_confusion(cm, classes)}"></section>')


def _calibration_section(m: dict[str, Any], y_true: np.ndarray, logits: np.ndarray,
                         temperature: float, proba: np.ndarray) -> str:
    """HTML of the ECE before and after scaling, the reliability diagram and its bins."""
    c = m["calibration"]
    before, after = c["ece_before"], c["ece_after"]
    verdict = {"better": "Scaling made them closer.",
               "same": "Scaling changed little: on so few images the difference is noise.",
               "worse": "Scaling made them worse here: it was fitted on other images."
               }[calibration_change(before, after)]
    return ('<section id="calibration"><h2>Calibration</h2>'
            f'<p>When the model says 80%, is it right 80% of the time? Its probabilities '
            f'were off by {before:.1%} on average (expected calibration error) before '
            f'temperature scaling and {after:.1%} after (T = {c["temperature"]:.2f}, fitted '
            f'at training time). {verdict}</p>'
            '<img alt="reliability diagram" src="data:image/svg+xml;base64,'
            f'{_reliability(y_true, logits, temperature)}">{_bins(proba, y_true)}'
            '</section>')


def _unknown_section(m: dict[str, Any]) -> str:
    """HTML of how many images were labelled unknown, and the accuracy on the others."""
    u = m["unknown"]
    acc = f"{u['accuracy_accepted']:.1%}" if u["accuracy_accepted"] is not None else "n/a"
    return ('<section id="unknown"><h2>Unknown rejection</h2>'
            f'<p>{u["rejected"]} of {m["n_images"]} images '
            f'({u["rejected_fraction"]:.1%}) were labelled <b>unknown</b> (unlike '
            f'every training image); accuracy on the others {acc}.</p></section>')


def _gallery_section(sources: Sequence[Any], classes: list[str], y_true: np.ndarray,
                     proba: np.ndarray) -> str:
    """HTML thumbnails: up to 24 mistakes (likeliest mislabelled first), 12 least confident."""
    e = html.escape
    pred, conf = proba.argmax(axis=1), proba.max(axis=1)
    own = proba[np.arange(len(y_true)), y_true]
    wrong = [i for i in np.argsort(own, kind="stable") if pred[i] != y_true[i]][:24]
    unsure = [i for i in np.argsort(conf) if i not in set(wrong)][:12]
    cards = []
    for kind, idx in (("misclassified", wrong), ("least confident", unsure)):
        for i in idx:
            src = sources[i]
            name = e(Path(str(src)).name) if not hasattr(src, "size") else "image"
            cards.append(f'<figure class="{kind.split()[0]}"><img alt="{name}" '
                         f'src="data:image/jpeg;base64,{_thumb(src)}"><figcaption>{kind}: '
                         f'{name}<br>true {e(classes[y_true[i]])}, predicted '
                         f'{e(classes[pred[i]])} ({conf[i]:.0%})</figcaption></figure>')
    return ('<section id="gallery"><h2>Mistakes and least confident images</h2>'
            '<p>Mistakes first, most likely mislabelled first (the least probability '
            'for the class they are filed under); then the least confident.</p>'
            f'<div class="grid">{"".join(cards) or "<p>No mistakes.</p>"}</div></section>')


def _dataset_section(m: dict[str, Any], classes: list[str],
                     dataset: dict[str, Any] | None) -> str:
    """HTML table of the dataset facts: images, classes, supports, then ``dataset``'s."""
    e = html.escape
    facts = {"images evaluated": m["n_images"], "classes": len(classes),
             **{f"support of {k}": v["support"] for k, v in m["per_class"].items()},
             **(dataset or {})}
    items = "".join(f"<tr><td>{e(str(k))}</td><td>{e(str(v))}</td></tr>"
                    for k, v in facts.items())
    return f'<section id="dataset"><h2>Dataset</h2><table>{items}</table></section>'


def write_model_report(clf: Any, model_dir: str | os.PathLike, name: str | None = None
                       ) -> dict[str, Any] | None:
    """``report.html`` + ``metrics.json`` in ``model_dir`` from the validation predictions
    kept by :meth:`Classifier.fit` (validation images, or out-of-fold predictions).
    ``name``: the model's name in the title (default: the folder's name)."""
    v = clf.held_out_
    if v is None or not len(v.y):
        return None
    s, chose = clf.summary_, clf.summary_.head_choice()
    facts = {"data": s.data, "layout": s.layout, "backbone": s.backbone, "head": s.head,
             **({"head settings": chose} if chose else {}),
             **({"images against ImageNet": f"{s.domain_gap.level} (similarity "
                                             f"{s.domain_gap.imagenet_similarity:.3f})"}
                if s.domain_gap and s.domain_gap.level else {}),
             "evaluated on": v.what,
             **{f"training images of {k}": n for k, n in s.train_counts.items()}}
    return write_report(Path(model_dir) / "report.html", clf.classes_, v.sources, v.y,
                        v.logits, clf.temperature_, v.rejected, model_dir, facts,
                        title=f"headstart model report: {name or Path(model_dir).name}",
                        health=s.health.to_dict(limit=20) if s.health else None)


def _page(out: Path, title: str, parts: list[str]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    check_output(out, "out")
    out.write_text(f'<!doctype html><html><head><meta charset="utf-8"><title>'
                   f"{html.escape(title)}</title><style>{STYLE}</style></head><body>"
                   f"{''.join(parts)}</body></html>\n")


REVIEW_SECTIONS = (("label", "Probably mislabelled"),
                   ("duplicate", "The same photo filed under two classes"),
                   ("outlier", "Unlike the rest of their class"))


def write_review_page(r: Review, out: str | os.PathLike, look: int = 24) -> Path:
    """The review as one self-contained HTML page: thumbnails grouped by kind of evidence,
    strongest first, each with its class, the suggested class and its probability; then
    up to ``look`` more images from the top of the label ranking ("worth a look")."""
    e = html.escape
    out = Path(out)

    def card(path: str, lines: list[str], kind: str) -> str:
        name = e(Path(path).name)
        return (f'<figure class="{kind}" title="{e(path)}"><img alt="{name}" '
                f'src="data:image/jpeg;base64,{_thumb(path)}"><figcaption>{name}<br>'
                f'{"<br>".join(lines)}</figcaption></figure>')
    parts = [f"<h1>headstart review: {e(r.data)}</h1>",
             f'<p class="big">{len(r.suggestions)} <span>suggestion(s) for {r.images} '
             f'images of {len(r.classes)} classes; out-of-fold accuracy '
             f'{r.oof_accuracy:.1%}</span></p>']
    for kind, heading in REVIEW_SECTIONS:
        items = [s for s in r.suggestions if s.kind == kind]
        cards = "".join(card(s.path, [f"filed under <b>{e(s.label)}</b>"] + (
            [f"suggested <b>{e(s.suggested)}</b> ({s.probability:.0%})"]
            if s.suggested and s.probability is not None else []) + [e(s.reason)], kind)
            for s in items)
        parts.append(f'<section id="{kind}"><h2>{heading} ({len(items)})</h2>'
                     f'<div class="grid">{cards or "<p>None found.</p>"}</div></section>')
    flagged = {s.path for s in r.suggestions}
    more = [x for x in r.ranking if x.path not in flagged and x.top != x.label][:look]
    cards = "".join(card(x.path, [f"filed under <b>{e(x.label)}</b> "
                                  f"({x.label_probability:.0%})",
                                  f"looks like {e(x.top)} ({x.top_probability:.0%})"], "look")
                    for x in more)
    parts.append('<section id="look"><h2>Also worth a look</h2><p>Predicted as another '
                 'class, but not confidently enough to suggest a change.</p>'
                 f'<div class="grid">{cards or "<p>None.</p>"}</div></section>')
    _page(out, f"headstart review: {r.data}", parts)
    return out
