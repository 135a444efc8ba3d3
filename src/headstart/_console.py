"""How the CLI talks: Rich output on stdout, progress and warnings on stderr, JSON for
machines. Only the CLI imports this module; the library logs and never prints."""

from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from rich.console import Console
from rich.text import Text
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, \
    TimeRemainingColumn

__all__ = ["emit_json", "err", "error_line", "health_line", "out", "print_health", "print_skipped",
           "progress_bar"]

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


def error_line(message: str) -> None:
    """The one ``error: ...`` line of a failed command, on stderr."""
    err.print(Text.assemble(("error:", "red"), f" {message}"))


def emit_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")
