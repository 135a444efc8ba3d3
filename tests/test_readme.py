"""The README's first two commands are the product's promise: check them as written."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest

from .conftest import REPO


def _bash_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)\n```", (REPO / "README.md").read_text(), re.S)


def test_readme_starts_with_demo_and_test_commands():
    demo, tests = _bash_blocks()[:2]
    assert "headstart train examples/" in demo and "pip install" in demo
    assert "pytest" in tests
    assert tests in (REPO / ".ci" / "run").read_text()


@pytest.mark.slow
def test_readme_demo_runs_and_is_accurate(tmp_path):
    demo = _bash_blocks()[0]
    shutil.copytree(REPO / "examples", tmp_path / "examples")
    steps = [s.strip() for s in demo.split("&&") if "headstart " in s]
    assert len(steps) == 2
    outputs = []
    for step in steps:
        argv = step.split()
        assert argv[0].endswith("bin/headstart")
        r = subprocess.run([sys.executable, "-m", "headstart", *argv[1:]], cwd=tmp_path,
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        outputs.append(r.stdout)
    accuracy = float(re.match(r"accuracy (\S+)% on 30 images", outputs[1]).group(1))
    assert accuracy >= 90
    assert (tmp_path / "safari-model" / "headstart.json").is_file()
