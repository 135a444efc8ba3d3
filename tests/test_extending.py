"""Extending headstart from the outside, as a plugin author would: the distribution in
tests/plugins (toy_plugin, with entry points) registers a head kind, an export format and a
backbone family. No file under src/ names any of them; the test puts the plugin on the
path of every process it starts (CLI, serve, studio), which is all a user's
``pip install`` would do."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from .conftest import EXAMPLES, assert_user_error, copy_images

pytestmark = pytest.mark.slow

PLUGINS = Path(__file__).parent / "plugins"
IMAGES = sorted((EXAMPLES / "test" / "giraffe").iterdir())[:3] + \
    sorted((EXAMPLES / "test" / "elephant").iterdir())[:3]


def _env() -> dict[str, str]:
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": f"{PLUGINS}{os.pathsep}{path}" if path else str(PLUGINS)}


def cli(*args: object, timeout: float = 300) -> subprocess.CompletedProcess:
    """``headstart ARGS`` with the plugin installed."""
    try:
        return subprocess.run([sys.executable, "-m", "headstart", *map(str, args)],
                              capture_output=True, text=True, timeout=timeout, env=_env())
    except subprocess.TimeoutExpired:
        pytest.fail(f"headstart {' '.join(map(str, args))} hung")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(port: int, method: str, path: str, body: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def _multipart(files: list[Path]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = b"".join(f'--{boundary}\r\nContent-Disposition: form-data; name="files"; '
                    f'filename="{f.name}"\r\n\r\n'.encode() + f.read_bytes() + b"\r\n"
                    for f in files) + f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def _started(cmd: list[str], log: Path, ready: re.Pattern[str], seconds: float = 180
             ) -> tuple[subprocess.Popen, re.Match[str]]:
    """A server process, once a line of its output matches ``ready``."""
    fh = open(log, "w")
    proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=_env())
    deadline = time.time() + seconds
    while time.time() < deadline:
        m = ready.search(log.read_text())
        if m:
            return proc, m
        if proc.poll() is not None:
            break
        time.sleep(0.3)
    proc.kill()
    pytest.fail(f"{cmd[3]} did not start: {log.read_text()[-2000:]}")


@pytest.fixture(scope="module")
def toy_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model with the plugin's head, trained through the CLI."""
    root = tmp_path_factory.mktemp("toy")
    data = copy_images(root / "data", per_class=8)
    r = cli("train", data, "--head", "prototype", "--out", root / "m", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["head"] == "prototype"
    return root / "m"


def test_the_registries_list_the_plugins_choices():
    heads = json.loads(cli("heads", "--json").stdout)
    formats = json.loads(cli("formats", "--json").stdout)
    assert [h["name"] for h in heads] == ["auto", "linear", "mlp", "prototype"]
    assert "nearest class mean" in heads[-1]["help"]
    assert [f["name"] for f in formats] == ["onnx", "openvino", "tflite", "coreml", "web",
                                            "torchscript"]
    assert "svm" not in cli("train", "x", "--head", "svm", "--out", "y").stdout
    assert_user_error(cli("train", EXAMPLES / "train", "--head", "svm", "--out", "y"),
                      "--head: expected one of auto, linear, mlp, prototype, got 'svm'")


def test_a_plugin_head_trains_saves_loads_predicts_exports_and_serves(toy_model, tmp_path):
    meta = json.loads((toy_model / "headstart.json").read_text())
    assert meta["head"]["kind"] == "prototype"
    r = cli("predict", toy_model, *IMAGES, "--json")
    assert r.returncode == 0, r.stderr
    labels = [p["label"] for p in json.loads(r.stdout)["predictions"]]
    assert labels[:3] == ["giraffe"] * 3 and labels[3:] == ["elephant"] * 3
    r = cli("export", toy_model, "--format", "onnx", "--samples", EXAMPLES / "test", "--json")
    assert r.returncode == 0, r.stderr
    parity = json.loads(r.stdout)["parity"]
    assert parity["ok"] and parity["max_abs_diff"] < 1e-4 and parity["images"] >= 6
    port = _port()
    proc, _ = _started([sys.executable, "-m", "headstart", "serve", str(toy_model), "--port",
                        str(port)], tmp_path / "serve.log", re.compile("serving"))
    try:
        for _ in range(100):
            try:
                if _request(port, "GET", "/health")[0] == 200:
                    break
            except OSError:
                time.sleep(0.2)
        body, kind = _multipart(IMAGES)
        status, data = _request(port, "POST", "/predict", body, {"Content-Type": kind})
        assert status == 200, data
        served = json.loads(data)["predictions"]
        assert [p["label"] for p in served] == labels
        assert set(served[0]) == {"filename", "label", "probability", "probabilities",
                                  "unknown", "unknown_score"}
    finally:
        proc.terminate()
        proc.wait(30)


def test_without_the_plugin_its_model_is_refused_naming_the_kind(toy_model):
    r = subprocess.run([sys.executable, "-m", "headstart", "predict", str(toy_model),
                        str(IMAGES[0])], capture_output=True, text=True, timeout=300)
    assert_user_error(r, "head.kind", "'prototype'", "install the plugin")


def test_a_plugin_export_format_through_the_cli_and_the_studio(toy_model, tmp_path):
    out = tmp_path / "m.pt"
    r = cli("export", toy_model, "--format", "torchscript", "--out", out, "--json")
    assert r.returncode == 0, r.stderr
    done = json.loads(r.stdout)
    assert done["path"] == str(out) and done["parity"]["ok"]
    assert done["metadata"]["classes"] == ["elephant", "giraffe"]
    project = tmp_path / "project"
    copy_images(project / "data", per_class=2)
    shutil.copytree(toy_model, project / "models" / "run1")
    port = _port()
    proc, m = _started([sys.executable, "-m", "headstart", "studio", str(project), "--port",
                        str(port)], tmp_path / "studio.log", re.compile(r"token=([\w-]+)"))
    head = {"X-Headstart-Token": m[1], "Content-Type": "application/json"}
    try:
        status, data = _request(port, "GET", "/api/project", headers=head)
        options = json.loads(data)["options"]
        assert status == 200 and "torchscript" in [f["name"] for f in options["exports"]]
        assert "prototype" in [h["name"] for h in options["heads"]]
        status, data = _request(port, "POST", "/api/runs/run1/export",
                                json.dumps({"format": "torchscript"}).encode(), head)
        assert status == 200, data
        assert json.loads(data)["parity"]["ok"]
        assert (project / "models" / "run1" / "model.pt").is_file()
        status, data = _request(port, "GET", "/api/runs/run1/download?format=torchscript",
                                headers=head)
        assert status == 200 and data == (project / "models" / "run1" / "model.pt").read_bytes()
    finally:
        proc.terminate()
        proc.wait(30)


def test_a_plugin_family_taps_a_timm_resnet_for_a_few_shot_head(tmp_path):
    """A ResNet-18 with random weights saved by the test: its layer2 and layer3 outputs,
    from timm's forward_intermediates, join the final features."""
    import timm
    from safetensors.torch import save_file

    weights = tmp_path / "resnet18.safetensors"
    save_file(timm.create_model("resnet18", pretrained=False).state_dict(), str(weights))
    data = copy_images(tmp_path / "data", per_class=5)
    r = cli("train", data, "--backbone", "resnet18", "--weights", weights, "--head", "linear",
            "--out", tmp_path / "m", "--json")
    assert r.returncode == 0, r.stderr
    meta = json.loads((tmp_path / "m" / "headstart.json").read_text())
    assert meta["backbone"]["taps"] == [2, 3] and meta["backbone"]["tap_grid"] == 2
    assert meta["backbone"]["tap_widths"] == [128 * 4, 256 * 4]
    assert meta["backbone"]["num_features"] == 512 + 512 + 1024
    r = cli("predict", tmp_path / "m", *IMAGES, "--json")
    assert r.returncode == 0, r.stderr
    probs = np.array([[p["probabilities"][c] for c in ("elephant", "giraffe")]
                      for p in json.loads(r.stdout)["predictions"]])
    assert probs.shape == (6, 2) and np.allclose(probs.sum(1), 1, atol=1e-5)
    r = cli("export", tmp_path / "m", "--samples", EXAMPLES / "test", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["parity"]["ok"]
