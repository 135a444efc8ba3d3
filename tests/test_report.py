"""The HTML report, generated through the CLI and rendered in headless Chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from headstart.insight.evaluate import bootstrap_ci

from .conftest import EXAMPLES, launch_chromium

SECTIONS = ["summary", "per-class", "confusion", "calibration", "unknown", "gallery",
            "dataset"]


def test_bootstrap_ci_brackets_the_mean_and_narrows_with_more_data():
    small = np.array([1, 0, 1, 1, 1, 0, 1, 1, 1, 1])
    lo, hi = bootstrap_ci(small)
    assert lo < small.mean() < hi
    lo2, hi2 = bootstrap_ci(np.tile(small, 50))
    assert hi2 - lo2 < hi - lo
    assert bootstrap_ci(np.ones(30)) is None  # never a zero-width interval


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("report")
    model = tmp / "model"
    r = subprocess.run([sys.executable, "-m", "headstart", "train", str(EXAMPLES / "train"),
                        "--out", str(model), "--head", "linear", "--finetune", "last-1",
                        "--epochs", "2", "--image-size", "64", "--augment", "none"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    report = tmp / "eval" / "report.html"
    r = subprocess.run([sys.executable, "-m", "headstart", "evaluate", str(model),
                        str(EXAMPLES / "test"), "--report", str(report)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "95% interval" in r.stdout and "unknown" in r.stdout
    return model, report


@pytest.mark.slow
def test_evaluate_report_is_self_contained_with_metrics_json(reports):
    _, report = reports
    text = report.read_text()
    for section in SECTIONS + ["curves"]:
        assert f'id="{section}"' in text
    assert not re.search(r"(src|href)=\"https?://", text)  # nothing from the network
    assert text.count("data:image/svg+xml;base64,") >= 3  # confusion, reliability, curves
    m = json.loads((report.parent / "metrics.json").read_text())
    lo, hi = m["accuracy_ci95"]
    assert lo <= m["accuracy"] <= hi and m["n_images"] == 30
    assert lo < 1.0  # never a zero-width interval, even at 30/30
    bins = text[text.index('class="bins"'):text.index("</table>", text.index('class="bins"'))]
    counts = re.findall(r"<tr><td>\d+%-\d+%</td><td>(\d+)</td>", bins)
    assert sum(map(int, counts)) == 30  # the reliability points with their image counts
    assert m["calibration"]["temperature"] > 0
    assert 0 <= m["unknown"]["rejected"] <= 30


@pytest.mark.slow
def test_train_writes_a_report_into_the_model_directory(reports):
    model, _ = reports
    assert (model / "report.html").is_file() and (model / "metrics.json").is_file()
    text = (model / "report.html").read_text()
    assert 'id="curves"' in text
    # what the head chose, and why: safari's photos are near ImageNet
    assert re.search(r"head settings</td><td>power-l2 features( \+ ImageNet class "
                     r"probabilities)?, C=[0-9.e+-]+ \(by out-of-fold log-loss\)", text)
    assert re.search(r"images against ImageNet</td><td>near \(similarity 0\.\d+\)", text)


@pytest.mark.slow
@pytest.mark.browser
def test_report_renders_in_headless_chromium(reports, tmp_path):
    from playwright.sync_api import sync_playwright

    _, report = reports
    with sync_playwright() as p:
        browser = launch_chromium(p)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        failed: list[str] = []
        page.on("requestfailed", lambda req: failed.append(req.url))
        page.goto(report.as_uri())
        for section in SECTIONS:
            assert page.locator(f"#{section}").is_visible(), section
        assert page.locator("#summary .big").inner_text().endswith(")")
        for alt in ("confusion matrix", "reliability diagram", "training curves"):
            img = page.locator(f'img[alt="{alt}"]')
            assert img.is_visible()
            assert img.evaluate("e => e.complete && e.naturalWidth > 100"), alt
        assert page.locator("#gallery figure img").count() >= 1
        shot = tmp_path / "report.png"
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert not failed
    assert shot.stat().st_size > 50_000
    keep = os.environ.get("HEADSTART_ARTIFACTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / "report.png")


@pytest.mark.slow
def test_report_numbers_come_with_words_and_round_ticks(reports):
    """Per-class recall with its interval (as the README says), calibration in words, the
    reliability chart's ticks at round values (never 0.204, 0.408...)."""
    import base64

    _, report = reports
    text = report.read_text()
    per_class = text[text.index('id="per-class"'):text.index("</section>",
                                                              text.index('id="per-class"'))]
    assert "recall (95% interval)" in per_class
    assert len(re.findall(r"\(\d+%-\d+%\)", per_class)) == 2  # elephant, giraffe
    assert "off by" in text and "When the model says 80%" in text
    svgs = [base64.b64decode(b).decode() for b in
            re.findall(r"data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)", text)]
    reliability = next(s for s in svgs if "reliability" in s)
    ticks = re.findall(r">(\d+(?:\.\d+)?)</text>", reliability)
    assert "0.2" in ticks and "0.8" in ticks
    assert not any(len(t) > 4 for t in ticks), ticks


def test_nice_ticks_are_round():
    from headstart.insight.charts import nice_ticks

    assert nice_ticks(0.0, 1.02).tolist() == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert nice_ticks(1, 15).tolist() == [5.0, 10.0, 15.0]
    assert nice_ticks(0.3, 0.97).tolist() == [0.4, 0.6, 0.8]
