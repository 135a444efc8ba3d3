"""How the CLI talks: Rich output on stdout, progress and warnings on stderr, JSON for
machines. Only the CLI imports this module; the library logs and never prints."""

from __future__ import annotations

import functools
import inspect
import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, \
    TimeElapsedColumn, TimeRemainingColumn

from .. import defaults
from ..fit.calibration import calibration_change
from ..fit.domain import explain
from ..errors import HeadstartError
from ..fit.summary import DomainGap

__all__ = ["emit_json", "err", "error_line", "health_line", "out", "print_advice",
           "print_evaluation", "print_export", "print_health", "print_predictions",
           "print_skipped", "print_training", "progress_bar"]

class _Console(Console):
    """Rich's console, but a reader that goes away (``headstart predict ... | head -1``) ends
    the command quietly with status 0, as for any Unix filter, instead of status 1."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, (sys.stderr if self.stderr else sys.stdout).fileno())
        os.close(devnull)
        raise SystemExit(0)


# markup off: file and class names such as "set[/b].jpg" or "[bold]giraffe" are printed as
# they are, never read as Rich markup; colour comes from style= and Text.assemble only
out = _Console(soft_wrap=True, markup=False, highlight=False)
err = _Console(stderr=True, soft_wrap=True, markup=False, highlight=False)


@contextmanager
def progress_bar(label: str) -> Iterator[Callable[[int, int], None]]:
    with Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=err, transient=True, disable=not err.is_terminal) as bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)
        yield update


@contextmanager
def rate_bar(label: str) -> Iterator[Callable[[int, float], None]]:
    """Progress of a stream of unknown length: images done and images per second."""
    with Progress(TextColumn(label), TextColumn("{task.completed} images"),
                  TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), console=err,
                  transient=True, disable=not err.is_terminal) as bar:
        task = bar.add_task(label, total=None, rate="")

        def update(done: int, rate: float) -> None:
            bar.update(task, completed=done, rate=f"{rate:.0f} images/s")
        yield update


def print_skipped(skipped: list[Any]) -> None:
    if skipped:
        err.print(f"skipped {len(skipped)} file(s):", style="yellow")
        for s in skipped[:20]:
            err.print(f"  {s.path}: {s.reason}")
        if len(skipped) > 20:
            err.print(f"  ... and {len(skipped) - 20} more")


def _listing(items: list[str], limit: int = 20) -> None:
    for line in items[:limit]:
        out.print(f"  {line}")
    if len(items) > limit:
        out.print(f"  ... and {len(items) - limit} more (--json lists all)")


def _section(label: str, style: str, head: str, items: list[str]) -> None:
    """One finding: a labelled headline (label padded to 11 columns), then its items."""
    out.print(Text.assemble((label, style), " " * max(1, 12 - len(label)), head))
    _listing(items)


def _group_line(g: dict[str, Any]) -> str:
    how = "exact copies" if g["kind"] == "exact" else f"near duplicates ({g['similarity']:.2f})"
    names = "  =  ".join(f"{m['path']} [{m['split']}/{m['label']}]" if m["label"]
                         else m["path"] for m in g["members"])
    return f"{how}: {names}"


def print_health(h: dict[str, Any]) -> None:
    """The findings of ``check``, most serious first."""
    counts = " | ".join(f"{split}: " + ", ".join(f"{c} {n}" for c, n in cl.items())
                        for split, cl in h["counts"].items())
    out.print(f"data        {h['data']} ({h['layout']}): {counts}")
    if h["leakage"]:
        _section("LEAKAGE", "bold red", f"{h['leaked_images']} held-out image(s) "
                 "are copies of images in another split: their accuracy is inflated; "
                 "remove them from one side", [_group_line(g) for g in h["leakage"]])
    if h["conflicts"]:
        _section("conflicts", "red", f"{len(h['conflicts'])} image(s) filed under two "
                 "classes (conflicting labels)", [_group_line(g) for g in h["conflicts"]])
    if h["unusable"]:
        _section("unusable", "red", f"{len(h['unusable'])} file(s), left out:",
                 [f"{u['path']}: {u['reason']}" for u in h["unusable"]])
    if h["duplicates"]:
        _section("duplicates", "yellow", f"{len(h['duplicates'])} group(s) within a "
                 "class (they weigh double in training)",
                 [_group_line(g) for g in h["duplicates"]])
    if h["folders"]:
        _section("folders", "yellow", f"{len(h['folders'])} problem(s):",
                 [f"{f['path']}: {f['problem']}" for f in h["folders"]])
    b = h["balance"]
    if b.get("imbalance_ratio") is not None:
        line = f"balance     imbalance ratio {b['imbalance_ratio']:.2f}x"
        if b["small_classes"]:
            line += "; fewer than 5 images: " + ", ".join(
                f"{c['class']} ({c['images']})" for c in b["small_classes"])
        for split, missing in b.get("missing_from_split", {}).items():
            line += f"; {split} lacks {missing}"
        for split, extra in b.get("not_in_train", {}).items():
            line += f"; {split} has classes not in train: {extra}"
        out.print(line)
    if h["notes"]:
        out.print(f"notes       {len(h['notes'])} (not problems):")
        _listing([f"{n['path']}: {n['note']}" for n in h["notes"]], 10)
    nd = h["near_duplicates"]
    if nd.get("searched"):
        out.print(f"near dups   searched: cosine >= {nd['threshold']:.2f} (median nearest "
                  f"neighbour {nd['median_nearest_similarity']:.2f}) and same thumbnail",
                  highlight=False)
    else:
        out.print(f"near dups   not searched: {nd.get('reason')}")
    out.print(f"result      {h['summary']}" + (f" (exit {h['exit_code']})"
                                               if h["exit_code"] else ""))


def health_line(h: dict[str, Any] | None, data: Path) -> None:
    """One stderr line about the data's health; loud when held-out images leak."""
    if not h or not h["problems"]:
        return
    color = "bold red" if h["leakage"] else "yellow"
    err.print(Text.assemble((f"data health: {h['summary']}", color),
                            f" (details: 'headstart check {data}' and the report)"))


def print_predictions(rows: list[dict[str, Any]], threshold: float | None = None) -> None:
    """One line per image: path, label, the label's probability and, where it matters, a
    note: "unknown" says why (its score against the model's ``threshold``) and which class
    came closest; a top probability below 60% says "not sure". Plain aligned text: a table
    of thousands of rows costs nothing to print."""
    width = max([len("path")] + [len(str(r["path"])) for r in rows])
    label = max([len("label")] + [len(r["label"]) for r in rows])
    lines = [f"{'path':<{width}}  {'label':<{label}}  probability  note"]
    for r in rows:
        top = max(r["probabilities"], key=r["probabilities"].get)
        if r["unknown"]:
            limit = f" > {threshold:.2f}" if threshold is not None else ""
            prob = "-"
            note = (f"unlike the training images (unknown score {r['unknown_score']:.2f}"
                    f"{limit}); closest class {top} {r['probability']:.0%}")
        else:
            prob = f"{r['probability']:.1%}"
            note = "not sure" if r["probability"] < defaults.NOT_SURE_BELOW else ""
        lines.append(f"{str(r['path']):<{width}}  {r['label']:<{label}}  {prob:>11}  {note}"
                     .rstrip())
    out.file.write("\n".join(lines) + "\n")
    out.file.flush()


def print_training(s: Any, data: Path, saved: Path) -> None:
    """What ``train`` did, one line per stage, each number with what it means (``s``: the
    :class:`TrainingSummary`)."""
    counts = ", ".join(f"{c} {n}" for c, n in s.train_counts.items())
    out.print(f"data        {data} ({s.layout}): {counts}")
    if s.from_scratch:
        f = s.from_scratch
        out.print(f"scratch     {f.arch} from random weights at {f.image_size} px, "
                  f"{f.epochs} epochs (best {f.best_epoch})")
    else:
        out.print(f"backbone    {s.backbone}: {s.features_computed} images computed "
                  f"({s.runtime}), {s.features_cached} from cache")
    cv = ", ".join(f"{k} {v:.1%}" for k, v in s.head_cv_accuracy.items())
    chose = s.head_choice()
    how = f", {chose}" if chose else ""
    out.print(f"head        {s.head}" + (f" (cross-validated accuracy: {cv}{how})" if cv else ""))
    if s.val_images:
        out.print(f"validation  accuracy {s.val_accuracy:.1%} on {s.val_images} held-out images "
                  f"({s.val_source}): {_grade(s.val_accuracy)}")
    else:
        out.print(f"validation  {s.val_source}: add more images per class to measure accuracy")
    _print_domain(s)
    _print_pile(s.unlabelled)
    _print_extras(s)
    report = saved / "report.html"
    out.print(f"saved       {saved} in {s.seconds:.1f} s" +
              (f" (report: {report})" if report.is_file() else " (no report: nothing held out)"))


CALIBRATION_WORDS = {"better": "better", "same": "no better: within noise on so few images",
                     "worse": "worse"}


def _grade(accuracy: float) -> str:
    """A word on an accuracy, for a person."""
    return ("very good" if accuracy >= 0.95 else "good" if accuracy >= 0.85 else
            "fair: more or clearer images per class would help" if accuracy >= 0.7 else
            "poor: check the labels ('headstart review') and add images")


PILE_WORDS = {"agree": "where the model and the similarity graph agree",
              "propagate": "by the similarity graph", "selftrain": "by the model"}


def _print_pile(p: Any) -> None:
    """What the unlabelled images did (``p``: the summary's ``unlabelled`` record)."""
    if not p:
        return
    p = p if isinstance(p, dict) else p.to_dict()
    read = f"{p['images']} read" + (f", {p['skipped']} skipped" if p.get("skipped") else "")
    unlike = f", {p['unlike']} unlike every labelled image left out" if p.get("unlike") else ""
    used = (f"; {p['used']} joined the training with the label they were given "
            f"({PILE_WORDS.get(p.get('method'), p.get('method'))})"
            if p.get("used") and p.get("kept") else "")
    out.print(f"unlabelled  {read}{unlike}{used}: {p['reason']}")


def _print_domain(s: Any) -> None:
    """The domain gap, read beside the accuracy it did or did not cost."""
    gap = s.domain_gap
    if gap is None or gap.level not in ("moderate", "far"):
        return
    line = f"domain      {explain(gap)}"
    if s.val_images and s.val_accuracy >= 0.9:
        line += (f"; the accuracy above ({s.val_accuracy:.1%}) says the pretrained features "
                 "work for these images anyway")
    elif gap.level == "far":
        line += "; transfer learning may not be the right tool: run 'headstart advise DATA'"
    out.print(line)


def _print_extras(s: Any) -> None:
    """Fine-tuning, INT8 and calibration, in words."""
    if s.finetune:
        f = s.finetune
        if f.ran:
            out.print(f"finetune    {f.mode} at {f.image_size} px, {f.epochs} epochs: "
                      f"validation accuracy {f.val_accuracy_finetuned:.1%} vs head only "
                      f"{f.val_accuracy_head_only:.1%}; kept {f.kept}"
                      + (f" ({f.keep_reason})" if f.keep_reason else ""))
        else:
            out.print(f"finetune    skipped: {f.reason}")
    if s.int8:
        out.print(f"int8        validation accuracy {s.int8.val_accuracy_int8:.1%} "
                  f"(FP32: {s.int8.val_accuracy_fp32:.1%})")
    c = s.calibration
    if c.fitted_on.startswith("not calibrated"):
        out.print(f"calibration temperature 1 ({c.fitted_on})")
    elif c.ece_before is not None:
        verdict = CALIBRATION_WORDS[calibration_change(c.ece_before, c.ece_after)]
        out.print(f"calibration probabilities off by {c.ece_before:.1%} on average before, "
                  f"{c.ece_after:.1%} after temperature {c.temperature:.2f} ({verdict}; "
                  f"{c.images} {c.fitted_on})")


def print_evaluation(m: dict[str, Any]) -> None:
    """Accuracy, unknown and calibration lines, the per-class table and the confusion
    matrix of :func:`headstart.insight.evaluate.evaluate`, each number with its meaning."""
    lo, hi = m["accuracy_ci95"]
    out.print(f"accuracy {m['accuracy']:.1%} on {m['n_images']} images: {_grade(m['accuracy'])} "
              f"(95% interval {lo:.1%}-{hi:.1%}, the range the true accuracy is likely in; "
              f"macro F1 {m['macro_f1']:.3f})")
    u, c = m["unknown"], m["calibration"]
    out.print(f"unknown  {u['rejected']} of {m['n_images']} images ({u['rejected_fraction']:.1%}) "
              "called unknown (unlike every training image)")
    verdict = CALIBRATION_WORDS[calibration_change(c["ece_before"], c["ece_after"])]
    out.print(f"calibration probabilities off by {c['ece_before']:.1%} on average before "
              f"temperature scaling, {c['ece_after']:.1%} after (T {c['temperature']:.2f}: "
              f"{verdict})")
    a = c["above_90"]
    if a["images"]:
        out.print(f"         above 90% sure: {a['images']} image(s), {a['wrong']} wrong (the "
                  f"probabilities predicted about {a['expected_wrong']:.1f} wrong)")
    table = Table("class", "precision", "recall", "f1", "support", box=None)
    for name, r in m["per_class"].items():
        table.add_row(name, f"{r['precision']:.3f}", f"{r['recall']:.3f}", f"{r['f1']:.3f}",
                      str(r["support"]))
    out.print(table)
    cm = Table("true \\ predicted", *m["classes"], box=None)
    for name, row in zip(m["classes"], m["confusion_matrix"]):
        cm.add_row(name, *map(str, row))
    out.print(cm)


def print_advice(r: dict[str, Any]) -> None:
    """The measurements and the recommendation of :func:`headstart.insight.advise.advise`."""

    d, g = r["data_size"], r["domain_gap"]
    out.print(f"data          {d['train_images']} training images "
              f"({', '.join(f'{c} {n}' for c, n in d['train_counts'].items())}), "
              f"imbalance {d['imbalance_ratio']:.1f}x; {d['val_images']} validation images"
              + (f" ({r['work']['repeats']} splits, averaged)" if r["work"]["repeats"] > 1
                 else "")
              + (f"; {d['skipped']} file(s) skipped (unreadable, not an image, or outside "
                 "the folder)" if d.get("skipped") else ""))
    if g["level"]:
        out.print(f"domain gap    {explain(DomainGap(**g))}")
    table = Table("option", "measured", "trained on", f"expected ({d['train_images']})",
                  "95% interval", "2x images", "10x images", box=None)
    for name, o in r["options"].items():
        lo, hi = o["interval"]
        table.add_row(name, f"{o['measured']:.1%}", str(o["images"]), f"{o['predicted']:.1%}",
                      f"{lo:.0%}-{hi:.0%}", f"{o['with_more_images']['2x']:.1%}",
                      f"{o['with_more_images']['10x']:.1%}")
    out.print(table)
    tied = r["too_close_to_call"]
    out.print(f"recommend     {r['recommendation']} (expected accuracy "
              f"{r['predicted_accuracy']:.1%}"
              + (f"; too close to call with {', '.join(tied)}" if tied else "") + ")")
    for reason in r["reasons"]:
        out.print(f"  because {reason}" if not reason.startswith("every accuracy")
                  else f"  note: {reason}")


def print_export(r: dict[str, Any]) -> None:
    """Where :func:`headstart.deploy.export.export` wrote what, and its checks."""
    m, p = r["metadata"], r["parity"]
    pre, size = m["preprocess"], m["preprocess"]["size"]
    quant = f", {r['quantize']}" if r.get("quantize") else ""
    out.print(f"exported    {r['path']} ({r['format']}{quant}, {r['bytes'] / 1e6:.1f} MB)")
    if "uint8" in str(m.get("input", "")):
        out.print(f"input       images (N, {size}, {size}, 3) uint8 RGB: shorter side to "
                  f"{size / pre['crop_pct']:.0f} px, centre crop {size} (normalised inside)")
    elif str(m.get("input", "")).startswith("image:"):
        out.print(f"input       image RGB {size} x {size} (scaled and normalised inside)")
    else:
        out.print(f"input       images (N, 3, {size}, {size}) float32: RGB, shorter side to "
                  f"{size / pre['crop_pct']:.0f} px ({pre['interpolation']}), centre crop "
                  f"{size}, x/255, (x - {pre['mean']}) / {pre['std']}")
    threshold = m.get("unknown_threshold")
    rule = f"unknown = score > {threshold:.4f}" if threshold is not None else "no unknown rule"
    out.print(f"outputs     probabilities for {m['classes']}, unknown_score ({rule})")
    if p.get("numeric") is False:
        out.print(f"checked     structure: {', '.join(k for k, v in p['structure'].items() if v)}")
        out.print(f"not checked {p['note']}")
    else:
        limit = "limit 1e-4" if not r.get("quantize") else f"{r['quantize']}: 90% of labels"
        same = round(p["label_agreement"] * p["images"])
        labels = f"all {same}" if same == p["images"] else f"{same} of {p['images']}"
        out.print(f"parity      {p['images']} {p['source']}: max probability difference vs "
                  f"PyTorch {p['max_abs_diff']:.1e} ({limit}), labels identical on {labels}")
    ref = r.get("unknown_reference")
    if ref:
        out.print(f"unknown     compact detector: {ref['rows']} of {ref['of']} reference rows; "
                  f"same unknown decisions as the full one on {ref['same_decisions']} of "
                  f"{ref['images']} sample images")


def error_line(message: str) -> None:
    """The one ``error: ...`` line of a failed command, on stderr."""
    err.print(Text.assemble(("error:", "red"), f" {message}"))


def emit_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")


def print_review(r: Any, page: Path | None, csv_file: Path | None, limit: int = 30) -> None:
    """The suggestions of :func:`headstart.insight.review.review`, strongest first (at most
    ``limit`` lines), and where the page and the CSV went."""
    out.print(f"{r.images} images, {len(r.classes)} classes; out-of-fold accuracy "
              f"{r.oof_accuracy:.4f}; {len(r.suggestions)} suggestion(s)")
    if r.suggestions:
        table = Table("kind", "image", "filed under", "suggested", box=None)
        table.columns[1].overflow = "fold"
        for s in r.suggestions[:limit]:
            sug = f"{s.suggested} ({s.probability:.0%})" if s.suggested and \
                s.probability is not None else "-"
            table.add_row(s.kind, Text(s.path), Text(s.label), Text(sug))
        out.print(table)
        if len(r.suggestions) > limit:
            out.print(f"... and {len(r.suggestions) - limit} more (--csv or --out)")
    if page is not None:
        out.print(f"page     {page}")
    if csv_file is not None:
        out.print(f"csv      {csv_file} (edit the action column, then: headstart review "
                  f"DATA --apply {csv_file})")


def print_suggestions(s: Any, csv_file: Path | None) -> None:
    """What ``suggest`` found: the images to label next, then those like no class."""
    out.print(f"{s.images} images; label these {len(s.label_next)} next (each stands for "
              "a group of similar images the model is unsure of):")
    table = Table("#", "image", "guess", "why", box=None)
    table.columns[1].overflow = "fold"
    for i, x in enumerate(s.label_next, 1):
        table.add_row(str(i), Text(x.path), Text(f"{x.guess} ({x.probability:.0%})"),
                      Text(x.why))
    out.print(table)
    if s.unlike:
        out.print(f"{len(s.unlike)} image(s) look like none of the classes (a new class, or "
                  "ones to leave out):")
        for x in s.unlike:
            out.print(Text(f"  {x.path} (closest: {x.guess}, unknown score "
                           f"{x.unknown_score:.2f})"))
    if csv_file is not None:
        out.print(f"csv      {csv_file}")


def print_moves(data: Path, n: int, log: Path | None, as_json: bool) -> None:
    """What ``review --apply`` (``log``: its log) or ``review --undo`` (``log`` None) did."""
    if as_json:
        emit_json({"moved": n, "log": str(log) if n else None} if log is not None
                  else {"restored": n})
    elif log is None:
        out.print(f"moved {n} file(s) back; {data} is as before")
    else:
        out.print(f"moved {n} file(s)" + (f"; undo: headstart review {data} --undo {log}"
                                         if n else ""))


def print_stream(r: Any, target: Path, as_json: bool) -> None:
    """What a streaming ``predict`` wrote (``r``: :class:`headstart.deploy.stream.StreamResult`)."""
    if as_json:
        emit_json({"out": str(target), "written": r.written, "resumed": r.resumed,
                   "counts": r.counts, "seconds": r.seconds,
                   "skipped": [{"path": s.path, "reason": s.reason} for s in r.skipped]})
        return
    out.print(f"wrote       {r.written} row(s) to {target} in {r.seconds:.1f} s"
              + (f" ({r.resumed} already there)" if r.resumed else ""))
    out.print("counts      " + ", ".join(f"{c} {n}" for c, n in r.counts.items()
                                         if n or c != "unknown"))


def option_names(fn: Callable[..., Any]) -> dict[str, str]:
    """The options of a Typer command, by the name of the parameter each sets (the names
    of the library's parameters): ``{"fmt": "--format", "max_epochs": "--epochs", ...}``,
    read from the command's declarations."""
    names = {}
    for name, p in inspect.signature(fn).parameters.items():
        decls = [d for d in getattr(p.default, "param_decls", None) or () if d.startswith("--")]
        names[name] = decls[0] if decls else "--" + name.replace("_", "-")
    return names


def spelling(fn: Callable[..., Any]) -> Callable[[str], str]:
    """How an error names a library parameter on this command: its option where it has
    one (``head`` -> ``--head``), else as the library does."""
    names = option_names(fn)
    return lambda param: names.get(param, param)


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn :class:`HeadstartError`, and an ``OSError`` of the machine (full disk, no
    permission), into a one-line message and exit status 2; a closed stdout (``| head``)
    ends the command quietly with status 0."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except HeadstartError as e:
            error_line(e.describe(spelling(fn)))
            raise typer.Exit(2) from None
        except BrokenPipeError:
            quiet_stdout()
            raise typer.Exit(0) from None
        except OSError as e:
            where = f"{e.filename}: " if e.filename else ""
            error_line(f"{where}{e.strerror or e}")
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(130) from None
    return wrapper


def quiet_stdout() -> None:
    """Point stdout at /dev/null, so that flushing it at exit cannot fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
