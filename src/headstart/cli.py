"""The ``headstart`` command: a thin layer over the Python API.

Results go to stdout (``--json`` for machines), progress and logs to stderr. Exit status:
0 success, 2 bad input (one line ``error: ...`` on stderr, no traceback), 3 ``check`` found
problems, 1 a bug.
"""

from __future__ import annotations

import csv
import functools
import logging
import sys
from pathlib import Path
from typing import Any, Callable, List, Optional

import typer
from rich.table import Column, Table

from ._console import (emit_json, err, error_line, health_line, out, print_health,
                       print_skipped, progress_bar)
from .errors import HeadstartError

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  help="Transfer learning for image classification, on a CPU, in seconds.")
RUNTIME_HELP = "Inference engine: auto | openvino | onnxruntime | torch."


def _user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn :class:`HeadstartError`, and an ``OSError`` of the machine (full disk, no
    permission), into a one-line message and exit status 2; a closed stdout (``| head``)
    ends the command quietly with status 0."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except HeadstartError as e:
            error_line(str(e))
            raise typer.Exit(2) from None
        except BrokenPipeError:
            _quiet_stdout()
            raise typer.Exit(0) from None
        except OSError as e:
            where = f"{e.filename}: " if e.filename else ""
            error_line(f"{where}{e.strerror or e}")
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(130) from None
    return wrapper


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so that flushing it at exit cannot fail again."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log details.")) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")


@app.command()
@_user_errors
def train(
    data: Path = typer.Argument(..., help="Folder of class folders, train/val folders, or CSV."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Model directory to write."),
    backbone: str = typer.Option("efficientnet_lite0", help="Backbone name."),
    weights: Optional[Path] = typer.Option(None, help="Local weights file for the backbone."),
    head: str = typer.Option("auto", help="auto | linear | mlp"),
    val: Optional[Path] = typer.Option(None, help="Validation folder of class folders."),
    seed: int = typer.Option(0, help="Random seed."),
    cache_dir: Optional[Path] = typer.Option(None, help="Feature cache directory."),
    runtime: str = typer.Option("auto", help=RUNTIME_HELP),
    int8: bool = typer.Option(False, "--int8", help="Quantise the backbone to INT8 (NNCF)."),
    finetune: str = typer.Option("off", help="off | auto | all | last-N: unfreeze the "
                                 "backbone (or its top N stages) and keep training."),
    augment: Optional[str] = typer.Option(None, help="Augmentation: none|light|strong "
                                          "(default light; none with --from-scratch)."),
    image_size: Optional[int] = typer.Option(None, help="Fine-tuning input size in pixels."),
    epochs: int = typer.Option(15, help="Maximum fine-tuning epochs."),
    lr: Optional[float] = typer.Option(None, help="Learning rate of the head (default 1e-3; "
                                       "3e-3 with --from-scratch)."),
    backbone_lr_factor: float = typer.Option(0.1, help="Backbone lr = lr x this factor."),
    patience: int = typer.Option(4, help="Stop after this many epochs without improvement."),
    max_minutes: Optional[float] = typer.Option(None, help="Time limit of fine-tuning."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted fine-tune."),
    accelerator: str = typer.Option("auto", help="Lightning accelerator: auto|cpu|gpu|..."),
    devices: str = typer.Option("1", help="Lightning devices (number, list or auto)."),
    strategy: str = typer.Option("auto", help="Lightning strategy, e.g. ddp."),
    num_nodes: int = typer.Option(1, help="Lightning number of nodes."),
    precision: Optional[str] = typer.Option(None, help="Lightning precision, e.g. "
                                            "16-mixed (default on GPU) or 32-true."),
    from_scratch: bool = typer.Option(False, "--from-scratch", help="Train a compact CNN "
                                      "from random weights instead of transfer learning."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Train a classifier on a folder of labelled images."""
    from .bundle import check_destination
    from .finetune import FinetuneConfig
    from .heads import HEADS
    from .model import Classifier

    check_destination(out_dir)  # before any work: never train for nothing, never lose files
    if head not in HEADS:
        raise HeadstartError(f"--head: expected one of {', '.join(HEADS)}, got {head!r}")
    config = FinetuneConfig(
        mode=finetune, augment=augment or ("none" if from_scratch else "light"),
        image_size=image_size, max_epochs=epochs,
        lr=lr if lr is not None else (3e-3 if from_scratch else 1e-3),
        backbone_lr_factor=backbone_lr_factor, patience=patience, max_minutes=max_minutes,
        resume=resume, accelerator=accelerator,
        devices=int(devices) if devices.isdigit() else devices, strategy=strategy,
        num_nodes=num_nodes, precision=precision)
    config.check()
    clf = Classifier(backbone=backbone, head=head, weights=weights, seed=seed,
                     cache_dir=cache_dir, runtime=runtime, int8=int8, finetune=finetune,
                     finetune_config=config, from_scratch=from_scratch)

    def on_epoch(row: dict) -> None:
        err.print(f"epoch {row['epoch']:3d}  train loss {row['train_loss']:.4f}  "
                  f"val accuracy {row['val_accuracy']:.4f}  ({row['seconds']:.0f} s)")

    with progress_bar("features") as progress:
        clf.fit(data, val=val, progress=progress, on_epoch=on_epoch)
    if not clf.is_global_zero_:
        return  # other DDP ranks: rank 0 writes the model and the report
    from .report import write_model_report

    saved = clf.save(out_dir, extra=lambda folder: write_model_report(clf, folder,
                                                                      out_dir.name))
    s = clf.summary_
    print_skipped(clf.skipped_)
    health_line(s.get("health"), data)
    if as_json:
        emit_json({**s, "out": str(saved), "classes": clf.classes_,
                    "skipped": [{"path": k.path, "reason": k.reason} for k in clf.skipped_]})
        return
    counts = ", ".join(f"{c} {n}" for c, n in s["train_counts"].items())
    out.print(f"data        {data} ({s['layout']}): {counts}")
    if not s["from_scratch"]:
        out.print(f"backbone    {s['backbone']}: {s['features_computed']} images computed "
                  f"({s['runtime']}), {s['features_cached']} from cache")
    if s["from_scratch"]:
        f = s["from_scratch"]
        out.print(f"scratch     {f['arch']} from random weights at {f['image_size']} px, "
                  f"{f['epochs']} epochs (best {f['best_epoch']})")
    cv = ", ".join(f"{k} {v:.3f}" for k, v in s["head_cv_accuracy"].items())
    out.print(f"head        {s['head']}" + (f" (CV accuracy: {cv})" if cv else ""))
    out.print(f"validation  accuracy {s['val_accuracy']:.4f} on {s['val_images']} images "
              f"({s['val_source']})")
    if s["finetune"]:
        f = s["finetune"]
        if f["ran"]:
            out.print(f"finetune    {f['mode']} at {f['image_size']} px, {f['epochs']} epochs: "
                      f"val accuracy {f['val_accuracy_finetuned']:.4f} vs head only "
                      f"{f['val_accuracy_head_only']:.4f}; kept {f['kept']}")
        else:
            out.print(f"finetune    skipped: {f['reason']}")
    if s["int8"]:
        q = s["int8"]
        out.print(f"int8        validation accuracy {q['val_accuracy_int8']:.4f} "
                  f"(FP32: {q['val_accuracy_fp32']:.4f})")
    c = s["calibration"]
    if c.get("ece_before") is not None:
        out.print(f"calibration temperature {c['temperature']:.2f} (ECE {c['ece_before']:.3f} "
                  f"-> {c['ece_after']:.3f} on {c['fitted_on']})")
    out.print(f"saved       {saved} in {s['seconds']:.1f} s (report: "
              f"{saved / 'report.html'})")


@app.command()
@_user_errors
def predict(
    model: Path = typer.Argument(..., help="Model directory from 'headstart train'."),
    paths: List[Path] = typer.Argument(..., help="Image files or folders."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    csv_file: Optional[Path] = typer.Option(None, "--csv", help="Also write a CSV here."),
    cache_dir: Optional[Path] = typer.Option(None, help="Feature cache directory."),
    runtime: str = typer.Option("auto", help=RUNTIME_HELP),
    no_unknown: bool = typer.Option(False, "--no-unknown",
                                    help="Never answer 'unknown' for unfamiliar images."),
) -> None:
    """Predict the class of images, then count images per class."""
    from .data import find_images
    from .model import Classifier

    clf = Classifier.load(model, cache_dir=cache_dir, runtime=runtime, unknown=not no_unknown)
    files, skipped = find_images(paths)
    with progress_bar("predict") as progress:
        pred = clf.predict_images(files, progress)
    skipped = skipped + pred.skipped
    print_skipped(skipped)
    rows = [{"path": p, "label": lab, "probability": float(pr.max()),
             "probabilities": {c: float(v) for c, v in zip(pred.classes, pr)},
             "unknown": bool(rej), "unknown_score": float(sc)}
            for p, lab, pr, rej, sc in zip(pred.sources, pred.labels, pred.proba,
                                           pred.rejected, pred.ood_score)]
    if csv_file is not None:
        # surrogateescape: a file name that is not valid UTF-8 is written back as its bytes
        with csv_file.open("w", newline="", encoding="utf-8", errors="surrogateescape") as fh:
            w = csv.writer(fh)
            w.writerow(["path", "label", "probability"] + [f"p_{c}" for c in pred.classes])
            for r in rows:
                w.writerow([r["path"], r["label"], f"{r['probability']:.6f}"]
                           + [f"{v:.6f}" for v in r["probabilities"].values()])
    if as_json:
        emit_json({"predictions": rows, "counts": pred.counts(),
                    "skipped": [{"path": s.path, "reason": s.reason} for s in skipped]})
        return
    table = Table(Column("path", overflow="fold"), "label", "probability", box=None)
    for r in rows:
        table.add_row(r["path"], r["label"], f"{r['probability']:.3f}")
    out.print(table)
    out.print("counts      " + ", ".join(f"{c} {n}" for c, n in pred.counts().items()))


@app.command()
@_user_errors
def evaluate(
    model: Path = typer.Argument(..., help="Model directory from 'headstart train'."),
    data: Path = typer.Argument(..., help="Labelled images (class folders, train/test, CSV)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    cache_dir: Optional[Path] = typer.Option(None, help="Feature cache directory."),
    runtime: str = typer.Option("auto", help=RUNTIME_HELP),
    report: Optional[Path] = typer.Option(None, help="Write an HTML report here (and "
                                          "metrics.json beside it)."),
    no_unknown: bool = typer.Option(False, "--no-unknown",
                                    help="Never answer 'unknown' for unfamiliar images."),
) -> None:
    """Accuracy, per-class precision/recall/F1 and confusion matrix on labelled images."""
    from .data import Skipped
    from .evaluate import evaluation
    from .model import Classifier

    clf = Classifier.load(model, cache_dir=cache_dir, runtime=runtime, unknown=not no_unknown)
    with progress_bar("evaluate") as progress:
        m, pred, y_true = evaluation(clf, data, progress)
    if report is not None:
        from .report import write_report

        write_report(report, clf.classes_, pred.sources, y_true, pred.logits,
                     clf.temperature_, pred.rejected, model,
                     {"data": str(data), "model": str(model)}, health=m["health"])
    print_skipped([Skipped(**k) for k in m["skipped"]])
    health_line(m["health"], data)
    if as_json:
        emit_json(m)
        return
    lo, hi = m["accuracy_ci95"]
    out.print(f"accuracy {m['accuracy']:.4f} on {m['n_images']} images "
              f"(95% CI {lo:.4f}-{hi:.4f}, macro F1 {m['macro_f1']:.4f})")
    u, c = m["unknown"], m["calibration"]
    out.print(f"unknown  {u['rejected']} image(s) rejected ({u['rejected_fraction']:.1%}); "
              f"calibration ECE {c['ece_before']:.3f} raw, {c['ece_after']:.3f} with "
              f"temperature {c['temperature']:.2f}")
    table = Table("class", "precision", "recall", "f1", "support", box=None)
    for c, r in m["per_class"].items():
        table.add_row(c, f"{r['precision']:.3f}", f"{r['recall']:.3f}", f"{r['f1']:.3f}",
                      str(r["support"]))
    out.print(table)
    cm = Table("true \\ predicted", *m["classes"], box=None)
    for c, row in zip(m["classes"], m["confusion_matrix"]):
        cm.add_row(c, *map(str, row))
    out.print(cm)
    if report is not None:
        out.print(f"report   {report}")


@app.command()
@_user_errors
def advise(
    data: Path = typer.Argument(..., help="Labelled images (class folders, train/val, CSV)."),
    budget: float = typer.Option(120.0, help="Seconds of training for the from-scratch "
                                 "baseline and the short fine-tune together."),
    backbone: str = typer.Option("efficientnet_lite0", help="Backbone name."),
    seed: int = typer.Option(0, help="Random seed."),
    cache_dir: Optional[Path] = typer.Option(None, help="Feature cache directory."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Measure whether transfer learning suits the data, and recommend what to do."""
    from .advise import advise as run_advise

    if budget <= 0:
        raise HeadstartError(f"--budget: expected seconds > 0, got {budget}")
    with progress_bar("features") as progress:
        r = run_advise(data, budget=budget, backbone=backbone, seed=seed,
                       cache_dir=cache_dir, progress=progress)
    if as_json:
        emit_json(r)
        return
    d, g, a = r["data_size"], r["domain_gap"], r["accuracy"]
    out.print(f"data          {d['train_images']} training images "
              f"({', '.join(f'{c} {n}' for c, n in d['train_counts'].items())}), "
              f"imbalance {d['imbalance_ratio']:.1f}x; {d['val_images']} validation images")
    if g["level"]:
        dist = f"{g['feature_distance']:.2f}" if g["feature_distance"] is not None else "n/a"
        out.print(f"domain gap    {g['level']}: feature distance {dist} (near < 3.0, far >= "
                  f"4.5), ImageNet confidence {g['imagenet_max_prob']:.2f}")
    curve = ", ".join(f"{c['images']}: {c['accuracy']:.3f}" for c in r["learning_curve"])
    out.print(f"learning curve {curve}"
              + (" (still rising)" if r["learning_curve_still_rising"] else ""))

    def fmt(v: Optional[float]) -> str:
        return f"{v:.4f}" if v is not None else "not run (budget)"
    out.print(f"accuracy      head only {fmt(a['head_only'])}, fine-tuned "
              f"{fmt(a['finetuned'])}, from scratch {fmt(a['from_scratch'])}")
    out.print(f"recommend     {r['recommendation']} (expected accuracy "
              f"{r['predicted_accuracy']:.4f})")
    for reason in r["reasons"]:
        out.print(f"  because {reason}")


@app.command()
@_user_errors
def check(
    data: Path = typer.Argument(..., help="Folder of class folders, train/val/test folders, "
                                "or CSV."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    near: bool = typer.Option(True, "--near/--no-near", help="Find near duplicates with "
                              "backbone features (cached); --no-near: exact ones only."),
    near_threshold: Optional[float] = typer.Option(None, help="Cosine similarity above which "
                                                   "two images are near duplicates "
                                                   "(default: adapted to the data)."),
    backbone: str = typer.Option("efficientnet_lite0", help="Backbone for near duplicates."),
    cache_dir: Optional[Path] = typer.Option(None, help="Feature cache directory."),
    runtime: str = typer.Option("auto", help=RUNTIME_HELP),
) -> None:
    """Find unusable files, duplicates, train/test leakage and imbalance in a dataset.

    Exit status 0: no problems; 3: problems found (listed); 2: not a dataset.
    """
    from .health import check as run_check

    if near_threshold is not None and not 0 < near_threshold <= 1:
        raise HeadstartError(f"--near-threshold: expected a cosine in (0, 1], got "
                             f"{near_threshold}")
    with progress_bar("features") as progress:
        h = run_check(data, backbone=backbone, cache_dir=cache_dir, runtime=runtime,
                      near=near, near_threshold=near_threshold, progress=progress).to_dict()
    if as_json:
        emit_json(h)
    else:
        print_health(h)
    raise typer.Exit(h["exit_code"])


@app.command()
@_user_errors
def export(
    model: Path = typer.Argument(..., help="Model directory from 'headstart train'."),
    fmt: str = typer.Option("onnx", "--format", "-f", help="onnx | openvino"),
    out_path: Optional[Path] = typer.Option(None, "--out", "-o", help="File to write "
                                            "(default MODEL/model.onnx or MODEL/model.xml)."),
    samples: Optional[List[Path]] = typer.Option(None, "--samples", help="Images or folders "
                                                 "for the parity check (repeatable)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Export to ONNX or OpenVINO, checked against PyTorch (nothing written if it fails).

    One graph: normalised images -> calibrated probabilities, unknown score, unknown flag.
    """
    from .export import export as run_export

    r = run_export(model, fmt, out_path, samples)
    if as_json:
        emit_json(r)
        return
    m, p = r["metadata"], r["parity"]
    pre = m["preprocess"]
    out.print(f"exported    {r['path']} ({r['format']}, {r['bytes'] / 1e6:.1f} MB)")
    out.print(f"input       images (N, 3, {pre['size']}, {pre['size']}) float32: RGB, shorter "
              f"side to {pre['size'] / pre['crop_pct']:.0f} px ({pre['interpolation']}), "
              f"centre crop {pre['size']}, x/255, (x - {pre['mean']}) / {pre['std']}")
    out.print(f"outputs     probabilities (N, {len(m['classes'])}) for {m['classes']}, "
              f"unknown_score (N,), unknown (N,) = score > {m['unknown_threshold']:.4f}")
    out.print(f"parity      {p['images']} {p['source']}: max probability difference vs "
              f"PyTorch {p['max_abs_diff']:.1e} (< 1e-4), labels identical: "
              f"{p['labels_identical']}")


@app.command()
@_user_errors
def serve(
    model: Path = typer.Argument(..., help="Model directory from 'headstart train'."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0: every "
                             "interface)."),
    port: int = typer.Option(8000, help="Port to listen on."),
    max_upload_mb: float = typer.Option(20.0, help="Largest request body (413 above)."),
    max_pixels: int = typer.Option(40_000_000, help="Largest image in pixels (413 above)."),
    max_batch: int = typer.Option(32, help="Most images run through the backbone at once."),
    batch_wait_ms: float = typer.Option(5.0, help="How long an image waits for others to "
                                        "batch with."),
    cache_dir: Optional[Path] = typer.Option(None, help="Feature/engine cache directory."),
    runtime: str = typer.Option("auto", help=RUNTIME_HELP),
) -> None:
    """Serve the model over HTTP: POST /predict, GET /info, /health, /docs, and a page at /."""
    from .serve import Limits, serve as run_server

    for name, value in (("--max-upload-mb", max_upload_mb), ("--max-pixels", max_pixels),
                        ("--max-batch", max_batch)):
        if value <= 0:
            raise HeadstartError(f"{name}: expected a number > 0, got {value}")
    if not 0 <= port <= 65535:
        raise HeadstartError(f"--port: expected 0-65535, got {port}")
    import socket

    try:
        with socket.create_server((host, port)):
            pass
    except OSError as e:
        raise HeadstartError(f"--host/--port: cannot listen on {host}:{port} ({e.strerror}); "
                             "choose another --port") from None
    run_server(model, host, port, Limits(max_upload_mb, max_pixels, 64, max_batch,
                                         batch_wait_ms), cache_dir, runtime,
               on_ready=lambda: err.print(f"serving {model} on http://{host}:{port}/ "
                                          "(API docs: /docs; Ctrl+C stops)"))


@app.command()
@_user_errors
def backbones(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List backbones: which work offline and which need a download."""
    from .backbones import list_backbones

    rows = list_backbones()
    if as_json:
        emit_json(rows)
        return
    table = Table("name", "timm model", "status", "how", box=None)
    for r in rows:
        table.add_row(r["name"], r["timm_name"], r["status"], r["how"])
    out.print(table)
    out.print("Any other timm model name works too, with internet once or --weights FILE.")


def main() -> None:
    """Console-script entry point."""
    app()
