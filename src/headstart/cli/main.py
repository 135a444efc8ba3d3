"""The ``headstart`` command: a thin layer over the Python API.

Results go to stdout (``--json`` for machines), progress and logs to stderr. Exit status:
0 success, 2 bad input or a machine problem (one line ``error: ...`` on stderr, no
traceback), 3 ``check`` found problems, 1 a bug. A library error names the parameter at
fault as a field (:class:`headstart.errors.HeadstartError`); this layer writes the option
that sets it instead (``--head: expected one of ..., got 'svm'``), read from the
command's own declarations.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any, List, Optional

import typer
from rich.table import Table

from .. import defaults
from ..cli.console import (emit_json, err, health_line, out, print_advice,
                           print_evaluation, print_export, print_health, print_moves,
                           print_predictions, print_review, print_skipped, print_stream,
                           print_suggestions, print_training, progress_bar, rate_bar,
                           user_errors)
from ..errors import HeadstartError

def flag(*decls: str, help: str, default: bool = False, **more: Any) -> Any:
    """A boolean option, shown in ``--help`` without a type (not ``--json <bool>``)."""
    return typer.Option(default, *decls, help=help, metavar="", **more)


app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  help="Transfer learning for image classification, on a CPU, in seconds.")
RUNTIME_HELP = "Inference engine: auto | openvino | onnxruntime | torch."
HEAD_HELP = "Head kind (see 'headstart heads'; default auto)."
FORMAT_HELP = "Export format (see 'headstart formats'; default onnx)."
FINETUNE, DISTRIBUTED = "Fine-tuning and training from scratch", "Distributed (Lightning)"

@app.callback()
def _main(verbose: bool = flag("--verbose", "-v", help="Log details."),
          threads: Optional[int] = typer.Option(None, "--threads", min=1, help="Threads for "
                                                "decoding and inference (default: the cores "
                                                "this process may use; env "
                                                "HEADSTART_THREADS).")) -> None:
    import os

    from .._threads import before_torch

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    if threads is not None:
        os.environ["HEADSTART_THREADS"] = str(threads)
    before_torch()  # passive OpenMP waits and sized pools, set before PyTorch loads


def _print_epoch(row: dict[str, float]) -> None:
    err.print(f"epoch {row['epoch']:3d}  train loss {row['train_loss']:.4f}  "
              f"val accuracy {row['val_accuracy']:.4f}  ({row['seconds']:.0f} s)")


@app.command()
@user_errors
def train(
    data: Path = typer.Argument(..., help="Folder of class folders, train/val folders, or CSV."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Model directory to write."),
    backbone: str = typer.Option(defaults.BACKBONE, help="Backbone name."),
    weights: Optional[Path] = typer.Option(None, help="Local weights file for the backbone."),
    head: str = typer.Option(defaults.HEAD, help=HEAD_HELP),
    val: Optional[Path] = typer.Option(None, help="Validation folder of class folders."),
    unlabelled: Optional[Path] = typer.Option(None, help="Folder of unlabelled images "
                                              "(any layout; folder names are not labels) "
                                              "the head learns from too, where that does "
                                              "not lower the cross-validated accuracy."),
    seed: int = typer.Option(0, help="Random seed."),
    cache_dir: Optional[Path] = typer.Option(None, help="Feature cache directory."),
    runtime: str = typer.Option(defaults.RUNTIME, help=RUNTIME_HELP),
    int8: bool = flag("--int8", help="Quantise the backbone to INT8 (NNCF)."),
    finetune: str = typer.Option("off", help="off | auto | all | last-N: unfreeze the "
                                 "backbone (or its top N stages) and keep training.",
                                 rich_help_panel=FINETUNE),
    from_scratch: bool = flag("--from-scratch", help="Train a compact CNN "
                                      "from random weights instead of transfer learning.",
                                      rich_help_panel=FINETUNE),
    augment: Optional[str] = typer.Option(None, help="Augmentation: none|light|strong "
                                          "(default light; none with --from-scratch).",
                                          rich_help_panel=FINETUNE),
    image_size: Optional[int] = typer.Option(None, help="Fine-tuning input size in pixels.",
                                             rich_help_panel=FINETUNE),
    max_epochs: int = typer.Option(defaults.EPOCHS, "--epochs",
                                   help="Maximum fine-tuning epochs.", rich_help_panel=FINETUNE),
    lr: Optional[float] = typer.Option(None, help=f"Learning rate of the head (default "
                                       f"{defaults.LR:g}; {defaults.SCRATCH_LR:g} with "
                                       "--from-scratch).", rich_help_panel=FINETUNE),
    backbone_lr_factor: float = typer.Option(defaults.BACKBONE_LR_FACTOR,
                                             help="Backbone lr = lr x this factor.",
                                             rich_help_panel=FINETUNE),
    patience: int = typer.Option(defaults.PATIENCE, help="Stop after this many epochs "
                                 "without improvement.", rich_help_panel=FINETUNE),
    max_minutes: Optional[float] = typer.Option(None, help="Time limit of fine-tuning.",
                                                rich_help_panel=FINETUNE),
    resume: bool = flag("--resume", help="Continue an interrupted fine-tune.",
                                rich_help_panel=FINETUNE),
    accelerator: str = typer.Option("auto", help="Lightning accelerator: auto|cpu|gpu|...",
                                    rich_help_panel=DISTRIBUTED),
    devices: str = typer.Option("1", help="Lightning devices (number, list or auto).",
                                rich_help_panel=DISTRIBUTED),
    strategy: str = typer.Option("auto", help="Lightning strategy, e.g. ddp.",
                                 rich_help_panel=DISTRIBUTED),
    num_nodes: int = typer.Option(1, help="Lightning number of nodes.",
                                  rich_help_panel=DISTRIBUTED),
    precision: Optional[str] = typer.Option(None, help="Lightning precision, e.g. "
                                            "16-mixed (default on GPU) or 32-true.",
                                            rich_help_panel=DISTRIBUTED),
    cluster: Optional[str] = typer.Option(None, help="Compute the frozen features on Ray "
                                          "first: local | auto | ray://HOST:PORT.",
                                          rich_help_panel=DISTRIBUTED),
    workers: int = typer.Option(2, help="With --cluster: backbone replicas.",
                                rich_help_panel=DISTRIBUTED),
    as_json: bool = flag("--json", help="Print one JSON object."),
) -> None:
    """Train a classifier on a folder of labelled images."""
    _train(SimpleNamespace(**locals()))


def _train(o: SimpleNamespace) -> None:
    """``train`` with its options ``o``: checks, the classifier, the Ray pre-warm, the
    fit, then the model and its report."""
    from ..fit.callbacks import Callbacks
    from ..fit.classifier import Classifier
    from ..fit.finetune import is_rank_zero
    from ..io.bundle import check_destination

    check_destination(o.out_dir)  # before any work: never train for nothing, never lose files
    clf = Classifier(backbone=o.backbone, head=o.head, weights=o.weights, seed=o.seed,
                     cache_dir=o.cache_dir, runtime=o.runtime, int8=o.int8,
                     finetune=o.finetune, finetune_config=_finetune_config(o),
                     from_scratch=o.from_scratch)
    if o.cluster is not None:
        from ..deploy.cluster import features_ray
        from ..fit.stages import use_taps
        from ..io.dataset import load_dataset

        paths, y, is_train = load_dataset(o.data, o.val).rows()
        features_ray(o.backbone, paths, o.cache_dir, o.cluster, o.workers,
                     taps=use_taps(o.head, y[is_train]))
    with progress_bar("features") as progress:
        clf.fit(o.data, val=o.val, callbacks=Callbacks(progress, _print_epoch),
                unlabelled=o.unlabelled)
    if is_rank_zero():  # other DDP ranks: rank 0 writes the model and the report
        _save_trained(o, clf)


def _finetune_config(o: SimpleNamespace) -> Any:
    """The fine-tuning (and from-scratch) settings of ``train``'s options."""
    from ..fit.finetune import FinetuneConfig

    return FinetuneConfig(
        mode=o.finetune, augment=o.augment or ("none" if o.from_scratch else "light"),
        image_size=o.image_size, max_epochs=o.max_epochs,
        lr=o.lr if o.lr is not None else (defaults.SCRATCH_LR if o.from_scratch
                                          else defaults.LR),
        backbone_lr_factor=o.backbone_lr_factor, patience=o.patience,
        max_minutes=o.max_minutes, resume=o.resume, accelerator=o.accelerator,
        devices=int(o.devices) if o.devices.isdigit() else o.devices, strategy=o.strategy,
        num_nodes=o.num_nodes, precision=o.precision)


def _save_trained(o: SimpleNamespace, clf: Any) -> None:
    """Write the model with its report, then say what was trained."""
    from ..insight.report import write_model_report

    saved = clf.save(o.out_dir, extra=lambda folder: write_model_report(clf, folder,
                                                                        o.out_dir.name))
    s = clf.summary_
    print_skipped(clf.skipped_)
    health_line(s.health.to_dict() if s.health else None, o.data)
    if o.as_json:
        emit_json({**s.to_dict(), "out": str(saved), "classes": clf.classes_,
                   "skipped": [{"path": k.path, "reason": k.reason} for k in clf.skipped_]})
        return
    print_training(s, o.data, saved)


@app.command()
@user_errors
def predict(
    model: Path = typer.Argument(..., help="Model directory from 'headstart train'."),
    paths: List[Path] = typer.Argument(..., help="Image files or folders."),
    as_json: bool = flag("--json", help="Print one JSON object."),
    csv_file: Optional[Path] = typer.Option(None, "--csv", help="Stream the predictions "
                                            "to this CSV, each row as soon as known."),
    jsonl: Optional[Path] = typer.Option(None, "--jsonl", help="Stream them to this JSON "
                                         "lines file instead."),
    resume: bool = flag("--resume", help="With --csv/--jsonl: skip the "
                                "images already in the file (same path and bytes)."),
    chunk: int = typer.Option(256, help="With --csv/--jsonl: images predicted and written "
                              "per step (memory stays flat at any number of images)."),
    cluster: Optional[str] = typer.Option(None, help="With --csv/--jsonl: predict on Ray: "
                                          "local | auto | ray://HOST:PORT "
                                          "(pip install 'headstart[ray]')."),
    workers: int = typer.Option(2, help="With --cluster: model replicas (one CPU each)."),
    cache_dir: Optional[Path] = typer.Option(None, help="Feature cache directory."),
    runtime: str = typer.Option(defaults.RUNTIME, help=RUNTIME_HELP),
    no_unknown: bool = flag("--no-unknown",
                                    help="Never answer 'unknown' for unfamiliar images."),
) -> None:
    """Predict the class of images, then count images per class."""
    from ..fit.classifier import Classifier
    from ..io.walk import find_images

    target = jsonl or csv_file
    if csv_file is not None and jsonl is not None:
        raise HeadstartError("--csv and --jsonl: expected one of them, got both")
    if (resume or cluster) and target is None:
        raise HeadstartError(f"--{'resume' if resume else 'cluster'}: expected --csv or "
                             "--jsonl to write to")
    clf = Classifier.load(model, cache=target is None, cache_dir=cache_dir, runtime=runtime,
                          unknown=not no_unknown)
    if target is not None:
        return _stream(model, clf, paths, target, "jsonl" if jsonl else "csv", resume, chunk,
                       cluster, workers, as_json)
    files, skipped = find_images(paths)
    with progress_bar("predict") as progress:
        pred = clf.predict_images(files, progress)
    skipped = skipped + pred.skipped
    print_skipped(skipped)
    rows = pred.records()
    if as_json:
        emit_json({"predictions": rows, "counts": pred.counts(),
                   "skipped": [{"path": s.path, "reason": s.reason} for s in skipped]})
        return
    print_predictions(rows, clf.ood_.threshold_ if clf.ood_ is not None else None)
    out.print("counts      " + ", ".join(f"{c} {n}" for c, n in pred.counts().items()))


def _stream(model: Path, clf: Any, paths: List[Path], target: Path, fmt: str, resume: bool,
            chunk: int, cluster: str | None, workers: int, as_json: bool) -> None:
    from ..deploy.cluster import predict_ray
    from ..deploy.stream import predict_stream

    with rate_bar("predict") as progress:
        if cluster:
            r = predict_ray(model, paths, target, fmt, resume, cluster, workers, chunk,
                            progress, unknown=clf.unknown)
        else:
            r = predict_stream(clf, paths, target, fmt, resume, chunk, progress)
    print_skipped(r.skipped)
    print_stream(r, target, as_json)


@app.command(short_help="Accuracy with its interval, per-class precision/recall/F1"
                          " and the confusion matrix.")
@user_errors
def evaluate(
    model: Path = typer.Argument(..., help="Model directory from 'headstart train'."),
    data: Path = typer.Argument(..., help="Labelled images (class folders, train/test, CSV)."),
    as_json: bool = flag("--json", help="Print one JSON object."),
    cache_dir: Optional[Path] = typer.Option(None, help="Feature cache directory."),
    runtime: str = typer.Option(defaults.RUNTIME, help=RUNTIME_HELP),
    report: Optional[Path] = typer.Option(None, help="Write an HTML report here (and "
                                          "metrics.json beside it)."),
    no_unknown: bool = flag("--no-unknown",
                                    help="Never answer 'unknown' for unfamiliar images."),
    review_page: Optional[Path] = typer.Option(None, "--review", help="Also review these "
                                               "images' labels (see 'headstart review'): "
                                               "write the page here."),
) -> None:
    """Accuracy, per-class precision/recall/F1 and confusion matrix on labelled images."""
    from ..io.dataset import Skipped
    from ..insight.evaluate import evaluation
    from ..fit.classifier import Classifier

    clf = Classifier.load(model, cache_dir=cache_dir, runtime=runtime, unknown=not no_unknown)
    with progress_bar("evaluate") as progress:
        m, pred, y_true = evaluation(clf, data, progress)
    if report is not None:
        from ..insight.report import write_report

        write_report(report, clf.classes_, pred.sources, y_true, pred.logits,
                     clf.temperature_, pred.rejected, model,
                     {"data": str(data), "model": str(model)}, health=m["health"])
    if review_page is not None:
        from ..insight.report import write_review_page
        from ..insight.review import findings

        r = findings(str(data), pred.sources, y_true, pred.proba, pred.features,
                     clf.classes_, m["health"]["conflicts"] + m["health"]["leakage"])
        write_review_page(r, review_page)
        m["review"] = {"page": str(review_page), "suggestions": len(r.suggestions)}
    print_skipped([Skipped(**k) for k in m["skipped"]])
    health_line(m["health"], data)
    if as_json:
        emit_json(m)
        return
    print_evaluation(m)
    if report is not None:
        out.print(f"report   {report}")
    if review_page is not None:
        out.print(f"review   {review_page} ({m['review']['suggestions']} suggestion(s))")


@app.command()
@user_errors
def advise(
    data: Path = typer.Argument(..., help="Labelled images (class folders, train/val, CSV)."),
    max_images: int = typer.Option(
        defaults.ADVISE_MAX_IMAGES, help="Training images per fine-tuning or from-scratch run "
        "(a sample beyond; the learning curves extrapolate to all of them)."),
    backbone: str = typer.Option(defaults.BACKBONE, help="Backbone name."),
    seed: int = typer.Option(0, help="Random seed."),
    cache_dir: Optional[Path] = typer.Option(None, help="Feature cache directory."),
    as_json: bool = flag("--json", help="Print one JSON object."),
) -> None:
    """Measure whether transfer learning suits the data, and recommend what to do."""
    from ..insight.advise import advise as run_advise
    from ..fit.callbacks import Callbacks

    with progress_bar("features") as progress:
        r = run_advise(data, max_images=max_images, backbone=backbone, seed=seed,
                       cache_dir=cache_dir, callbacks=Callbacks(progress))
    if as_json:
        emit_json(r)
        return
    print_advice(r)


@app.command()
@user_errors
def check(
    data: Path = typer.Argument(..., help="Folder of class folders, train/val/test folders, "
                                "or CSV."),
    as_json: bool = flag("--json", help="Print one JSON object."),
    near: bool = flag("--near/--no-near", default=True, help="Find near duplicates with "
                              "backbone features (cached); --no-near: exact ones only."),
    near_threshold: Optional[float] = typer.Option(None, help="Cosine similarity above which "
                                                   "two images are near duplicates "
                                                   "(default: adapted to the data)."),
    backbone: str = typer.Option(defaults.BACKBONE, help="Backbone for near duplicates."),
    cache_dir: Optional[Path] = typer.Option(None, help="Feature cache directory."),
    runtime: str = typer.Option(defaults.RUNTIME, help=RUNTIME_HELP),
) -> None:
    """Find unusable files, duplicates, train/test leakage and imbalance in a dataset.

    Exit status 0: no problems; 3: problems found (listed); 2: not a dataset.
    """
    from ..fit.health import check as run_check

    with progress_bar("features") as progress:
        h = run_check(data, backbone=backbone, cache_dir=cache_dir, runtime=runtime,
                      near=near, near_threshold=near_threshold, progress=progress).to_dict()
    if as_json:
        emit_json(h)
    else:
        print_health(h)
    raise typer.Exit(h["exit_code"])


@app.command(short_help="The unlabelled images to label next, and those like none of"
                          " the classes.")
@user_errors
def suggest(
    model: Path = typer.Argument(..., help="Model directory from 'headstart train'."),
    folder: Path = typer.Argument(..., help="Folder of unlabelled images (searched "
                                  "recursively; folder names are not labels)."),
    n: int = typer.Option(20, "--n", min=1, max=10_000, help="How many to suggest."),
    csv_file: Optional[Path] = typer.Option(None, "--csv", help="Write the suggestions here "
                                            "(path, guess, probability, ..., why)."),
    as_json: bool = flag("--json", help="Print one JSON object."),
    cache_dir: Optional[Path] = typer.Option(None, help="Feature cache directory."),
) -> None:
    """The unlabelled images most worth labelling next (typical of many others and
    uncertain to the model, spread over the pile, near duplicates collapsed), each with the
    model's guess; then the images that look like none of the classes."""
    from ..fit.classifier import Classifier
    from ..insight.suggest import suggest as run_suggest, write_csv

    from ..io.files import check_output

    if csv_file is not None:
        check_output(csv_file, "csv")
    clf = Classifier.load(model, cache_dir=cache_dir)
    with progress_bar("predict") as progress:
        s = run_suggest(clf, folder, n, progress)
    print_skipped(s.skipped)
    if csv_file is not None:
        write_csv(s, csv_file)
    if as_json:
        return emit_json(s.to_dict())
    print_suggestions(s, csv_file)


@app.command(short_help="Find probable label errors, copies under two classes and"
                          " outliers; move the chosen ones, undoably.")
@user_errors
def review(
    data: Path = typer.Argument(..., help="Labelled images: class folders, train/val "
                                "folders, or CSV."),
    out_html: Optional[Path] = typer.Option(None, "--report", "--out", "-o", help="Write "
                                            "the review page (HTML, thumbnails embedded) "
                                            "to this file (as 'evaluate --report')."),
    csv_file: Optional[Path] = typer.Option(None, "--csv", help="Write the suggestions "
                                            "here, with an editable 'action' column."),
    apply_csv: Optional[Path] = typer.Option(None, "--apply", help="Carry out the 'action' "
                                             "column of a suggestions CSV (move / "
                                             "set_aside / keep); never deletes."),
    undo_log: Optional[Path] = typer.Option(None, "--undo", help="Undo an --apply from "
                                            "its log."),
    as_json: bool = flag("--json", help="Print one JSON object."),
    backbone: str = typer.Option(defaults.BACKBONE, help="Backbone name."),
    cache_dir: Optional[Path] = typer.Option(None, help="Feature cache directory."),
) -> None:
    """Find the images whose labels are probably wrong, copies filed under two classes and
    images unlike the rest of their class; move the chosen ones, undoably."""
    from ..insight.review import apply, undo, write_suggestions
    from ..insight.review import review as run_review

    if undo_log is not None:
        return print_moves(data, undo(undo_log, data), None, as_json)
    if apply_csv is not None:
        log, n = apply(apply_csv, data)
        return print_moves(data, n, log, as_json)
    with progress_bar("features") as progress:
        r = run_review(data, backbone=backbone, cache_dir=cache_dir, progress=progress)
    print_skipped(r.skipped)
    if out_html is not None:
        from ..insight.report import write_review_page

        write_review_page(r, out_html)
    if csv_file is not None:
        write_suggestions(r, csv_file)
    if as_json:
        emit_json(r.to_dict())
    else:
        print_review(r, out_html, csv_file)


@app.command(short_help="Export the model for another runtime, a phone or a web"
                          " page, checked before it is written.")
@user_errors
def export(
    model: Path = typer.Argument(..., help="Model directory from 'headstart train'."),
    fmt: str = typer.Option("onnx", "--format", "-f", help=FORMAT_HELP),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="File (or folder) to write "
                                       "(default MODEL/model.<suffix of the format>)."),
    samples: Optional[List[Path]] = typer.Option(None, "--samples", help="Images or folders "
                                                 "for the parity check (repeatable)."),
    int8: bool = flag("--int8", help="tflite: INT8 backbone, calibrated on the "
                              "training images (about 3x smaller)."),
    fp16: bool = flag("--fp16", help="web: float16 weights (half the "
                              "download)."),
    as_json: bool = flag("--json", help="Print one JSON object."),
) -> None:
    """Export the model (ONNX, OpenVINO, TFLite, Core ML, an offline web page, or a plugin's
    format), checked against PyTorch on sample images (nothing written if it fails).
    """
    from ..deploy.export import export as run_export

    if int8 and fp16:
        raise HeadstartError("choose one of --int8 and --fp16")
    r = run_export(model, fmt, out, samples, quantize="int8" if int8 else "fp16" if fp16 else None)
    if as_json:
        emit_json(r)
        return
    print_export(r)


@app.command()
@user_errors
def serve(
    model: Path = typer.Argument(..., help="Model directory from 'headstart train'."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0: every "
                             "interface)."),
    port: int = typer.Option(defaults.PORT, help="Port to listen on."),
    max_upload_mb: float = typer.Option(defaults.MAX_UPLOAD_MB, help="Largest request body "
                                        "(413 above)."),
    max_pixels: int = typer.Option(defaults.MAX_PIXELS, help="Largest image in pixels "
                                   "(413 above)."),
    max_batch: int = typer.Option(defaults.MAX_BATCH, help="Most images run through the "
                                  "backbone at once."),
    batch_wait_ms: float = typer.Option(defaults.BATCH_WAIT_MS, help="How long an image "
                                        "waits for others to batch with."),
    body_timeout_s: float = typer.Option(defaults.BODY_TIMEOUT_S, "--body-timeout",
                                         help="Seconds a request body may take, plus 1 s "
                                         "per KiB (408 after)."),
    cache_dir: Optional[Path] = typer.Option(None, help="Feature/engine cache directory."),
    runtime: str = typer.Option(defaults.RUNTIME, help=RUNTIME_HELP),
) -> None:
    """Serve the model over HTTP: POST /predict, GET /info, /health, /docs, and a page at /."""
    from ..deploy.serve import Limits
    from ..deploy.serve import serve as run_server

    limits = Limits(max_upload_mb, max_pixels, defaults.MAX_FILES, max_batch, batch_wait_ms,
                    body_timeout_s)
    run_server(model, host, port, limits, cache_dir, runtime,
               on_ready=lambda: err.print(f"serving {model} on http://{host}:{port}/ "
                                          "(API docs: /docs; Ctrl+C stops)"))


@app.command(short_help="The whole loop in a local web app: collect, label, check,"
                          " train, review, try, export.")
@user_errors
def studio(
    project: Optional[Path] = typer.Argument(None, help="Project folder (created if "
                                             "missing): data/<class>/, models/. Without "
                                             "it: a start page of recent projects."),
    host: str = typer.Option("127.0.0.1", help="Address to bind."),
    port: int = typer.Option(defaults.STUDIO_PORT, help="Port."),
    import_from: Optional[Path] = typer.Option(None, "--import", help="Copy the class "
                                               "folders of this folder into the project."),
    allow_host: Optional[List[str]] = typer.Option(None, "--allow-host", help="Another "
                                                   "Host name or address to answer (a LAN "
                                                   "set-up; repeatable). Others get 403."),
    body_timeout: float = typer.Option(defaults.BODY_TIMEOUT_S, help="Seconds a request "
                                       "body may take, plus 1 s per KiB (408 after)."),
    projects: Optional[Path] = typer.Option(None, help="Where the start page makes new "
                                            "projects [default: ~/headstart-projects]."),
) -> None:
    """The whole loop in a local web app: collect, label, check, train, review, try,
    export. Open the address it prints (it carries this launch's token)."""
    from ..studio.start import studio as run_studio

    if body_timeout <= 0:
        raise HeadstartError(param="body_timeout", expected="a number > 0", got=body_timeout)
    run_studio(project, host, port, on_ready=lambda url: out.print(f"studio      {url}"),
               import_from=import_from, allow_hosts=tuple(allow_host or ()),
               body_timeout=body_timeout, projects=projects)


@app.command()
@user_errors
def backbones(as_json: bool = flag("--json", help="Print JSON.")) -> None:
    """List backbones: which work offline and which need a download."""
    from ..backbone.build import list_backbones

    rows = list_backbones()
    if as_json:
        emit_json(rows)
        return
    table = Table("name", "timm model", "status", "how", box=None)
    for r in rows:
        table.add_row(r["name"], r["timm_name"], r["status"], r["how"])
    out.print(table)
    out.print("Any other timm model name works too, with internet once or --weights FILE.")


@app.command()
@user_errors
def heads(as_json: bool = flag("--json", help="Print JSON.")) -> None:
    """List the head kinds 'train --head' takes (plugins add more)."""
    from ..heads import HEAD_KINDS

    _choices([(h.kind, h.help) for h in HEAD_KINDS], as_json)


@app.command()
@user_errors
def formats(as_json: bool = flag("--json", help="Print JSON.")) -> None:
    """List the formats 'export --format' writes (plugins add more)."""
    from ..deploy.export import EXPORT_FORMATS

    _choices([(f.name, f.help + (f" (not here: {f.unavailable()})" if f.unavailable() else ""))
              for f in EXPORT_FORMATS], as_json)


def _choices(rows: list[tuple[str, str]], as_json: bool) -> None:
    if as_json:
        emit_json([{"name": n, "help": h} for n, h in rows])
        return
    table = Table("name", "what", box=None)
    for name, text in rows:
        table.add_row(name, text)
    out.print(table)


def main() -> None:
    """Console-script entry point."""
    app()
