"""The HTTP server: a real `headstart serve` process on a free 127.0.0.1 port, real HTTP
requests, the page driven in headless Chromium, and a bounded load test."""

from __future__ import annotations

import http.client
import json
import socket
import statistics
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from .conftest import EXAMPLES, _png_header_only, launch_chromium, make_bad_corpus, trickle

pytestmark = pytest.mark.slow  # a module-scoped server, or a trained model, in every test
TEST_IMAGES = sorted((EXAMPLES / "test" / "giraffe").iterdir())[:4] + \
    sorted((EXAMPLES / "test" / "elephant").iterdir())[:4]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Client:
    """Plain HTTP against the server (a new connection per request, like most clients)."""

    def __init__(self, port: int) -> None:
        self.port = port

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, object]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            data = r.read()
        finally:
            conn.close()
        kind = r.getheader("content-type") or ""
        return r.status, json.loads(data) if "json" in kind else data.decode("utf-8", "replace")

    def predict(self, files: list[tuple[str, bytes]], field: str = "files"
                ) -> tuple[int, object]:
        boundary = uuid.uuid4().hex
        parts = []
        for name, content in files:
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
                         f'filename="{name}"\r\nContent-Type: application/octet-stream\r\n\r\n'
                         .encode() + content + b"\r\n")
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
        return self.request("POST", "/predict", body,
                            {"Content-Type": f"multipart/form-data; boundary={boundary}"})


def _chunked_upload(port: int, content: bytes) -> int:
    """POST one file with chunked transfer encoding (the body size is not declared)."""
    boundary = uuid.uuid4().hex

    def body():
        yield (f'--{boundary}\r\nContent-Disposition: form-data; name="files"; '
               'filename="big.jpg"\r\n\r\n').encode()
        for i in range(0, len(content), 65536):
            yield content[i:i + 65536]
        yield f"\r\n--{boundary}--\r\n".encode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    conn.request("POST", "/predict", body=body(), encode_chunked=True,
                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    status = conn.getresponse().status
    conn.close()
    return status


@pytest.fixture(scope="module")
def server(trained):
    _, model_dir = trained
    port = _free_port()
    log = open(Path(model_dir).parent / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "headstart", "serve", str(model_dir),
                             "--port", str(port), "--max-upload-mb", "2",
                             "--body-timeout", "3"],
                            stdout=log, stderr=subprocess.STDOUT)
    client = Client(port)
    deadline = time.time() + 180
    while True:
        try:
            if client.request("GET", "/health")[0] == 200:
                break
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail("server did not start: " + Path(log.name).read_text()[-2000:])
        time.sleep(0.3)
    yield client, model_dir
    proc.terminate()
    proc.wait(30)
    log.close()
    assert "Traceback" not in Path(log.name).read_text()


def test_health_info_and_local_docs(server):
    client, model_dir = server
    status, health = client.request("GET", "/health")
    assert status == 200 and health["status"] == "ok"
    status, info = client.request("GET", "/info")
    meta = json.loads((model_dir / "headstart.json").read_text())
    assert status == 200 and info["classes"] == meta["classes"]
    assert info["validation"]["accuracy"] == meta["summary"]["val_accuracy"]
    assert info["backbone"] == "efficientnet_lite0"
    status, docs = client.request("GET", "/docs")
    assert status == 200 and "/static/swagger/swagger-ui-bundle.js" in docs
    assert "cdn" not in docs.lower()
    assert client.request("GET", "/static/swagger/swagger-ui-bundle.js")[0] == 200
    for escape in ("/static/swagger/..%2f..%2fheadstart.json", "/static/swagger/%2e%2e/serve.py",
                   "/static/swagger/..%5c..%5cdefaults.py", "/static/swagger/%00.js"):
        status, body = client.request("GET", escape)
        assert status == 404 and "headstart" not in str(body)[:2000], (escape, status)
    status, spec = client.request("GET", "/openapi.json")
    assert "/predict" in spec["paths"]


def test_server_answers_equal_cli_predict(server):
    client, model_dir = server
    status, body = client.predict([(p.name, p.read_bytes()) for p in TEST_IMAGES])
    assert status == 200, body
    r = subprocess.run([sys.executable, "-m", "headstart", "predict", str(model_dir),
                        *map(str, TEST_IMAGES), "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    cli = json.loads(r.stdout)["predictions"]
    served = body["predictions"]
    assert [p["filename"] for p in served] == [p.name for p in TEST_IMAGES]
    assert [p["label"] for p in served] == [p["label"] for p in cli]
    assert [p["unknown"] for p in served] == [p["unknown"] for p in cli]
    np.testing.assert_allclose([list(p["probabilities"].values()) for p in served],
                               [list(p["probabilities"].values()) for p in cli], atol=1e-5)
    assert {p["label"] for p in served} >= {"giraffe", "elephant"}


def test_bad_input_gets_4xx_with_reason_never_500(server, tmp_path):
    client, _ = server
    unusable, _ = make_bad_corpus(tmp_path / "bad")
    for rel, fragment in unusable.items():
        path = tmp_path / "bad" / rel
        if not path.is_file():  # the broken link
            continue
        status, body = client.predict([(path.name, path.read_bytes())])
        assert status in (413, 422), (rel, status, body)
        assert body["detail"][0]["filename"] == path.name
        assert body["detail"][0]["reason"], rel
    _png_header_only(tmp_path / "wide.png", 9000, 5000)  # 45 Mpx > the 40 Mpx default
    status, body = client.predict([("wide.png", (tmp_path / "wide.png").read_bytes())])
    assert status == 413 and "too many pixels" in body["detail"][0]["reason"]
    good = TEST_IMAGES[0].read_bytes()
    status, body = client.predict([("ok.jpg", good), ("notes.jpg", b"plain text")])
    assert status == 422 and [d["filename"] for d in body["detail"]] == ["notes.jpg"]
    big = np.random.default_rng(0).integers(0, 255, 3 * 1024 * 1024, np.uint8).tobytes()
    assert client.predict([("big.jpg", big)])[0] == 413       # over --max-upload-mb 2
    assert _chunked_upload(client.port, big) == 413            # no Content-Length to trust
    assert client.predict([("x.jpg", good)], field="image")[0] == 422
    assert client.request("POST", "/predict", b"{}", {"Content-Type": "application/json"}
                          )[0] == 422
    assert client.request("POST", "/predict", b"junk", {
        "Content-Type": "multipart/form-data; boundary=zz"})[0] == 400
    cut = (b'--zz\r\nContent-Disposition: form-data; name="files"; filename="a.jpg"\r\n\r\n'
           + good[:500])                                 # a body cut off mid-file: 400
    status, body = client.request("POST", "/predict", cut, {
        "Content-Type": "multipart/form-data; boundary=zz"})
    assert status == 400 and "broken multipart" in body["detail"]
    assert client.request("GET", "/predict")[0] == 405
    assert client.predict([(f"{i}.jpg", good) for i in range(65)])[0] == 413
    assert client.request("GET", "/health")[0] == 200


def test_a_trickling_body_is_refused_in_time_and_any_host_is_answered(server):
    client, _ = server
    status, health = client.request("GET", "/health", headers={"Host": "evil.example"})
    assert status == 200 and health["status"] == "ok"  # changes nothing: open to any Host
    head = (f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{client.port}\r\nContent-Type: "
            "multipart/form-data; boundary=b\r\nContent-Length: 5000\r\n\r\n--b\r\n"
            'Content-Disposition: form-data; name="files"; filename="a.jpg"\r\n\r\n').encode()
    status, took, closed = trickle(client.port, head, b"x" * 60, every=0.5, seconds=30)
    assert status == 408 and took < 10 and closed, (status, took, closed)
    assert client.request("GET", "/health")[0] == 200  # and the server goes on


def test_load_200_requests_8_concurrent(server):
    client, _ = server
    images = [p.read_bytes() for p in TEST_IMAGES]
    before = client.request("GET", "/health")[1]

    def one(i: int) -> tuple[int, float]:
        t = time.perf_counter()
        status, _ = client.predict([(f"{i}.jpg", images[i % len(images)])])
        return status, time.perf_counter() - t
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(200)))
    statuses = [s for s, _ in results]
    latencies = sorted(t for _, t in results)
    p50 = statistics.median(latencies)
    p99 = latencies[int(0.99 * len(latencies)) - 1]
    print(f"\nload: 200 requests, 8 concurrent: p50 {p50 * 1000:.0f} ms, "
          f"p99 {p99 * 1000:.0f} ms")
    assert statuses.count(200) == 200, sorted(set(statuses))
    after = client.request("GET", "/health")[1]
    served = after["images_served"] - before["images_served"]
    assert served == 200
    assert after["batches"] - before["batches"] < served  # concurrent requests were batched


@pytest.mark.browser
def test_page_in_headless_chromium(server, tmp_path):
    from playwright.sync_api import sync_playwright

    client, _ = server
    status, body = client.predict([(TEST_IMAGES[0].name, TEST_IMAGES[0].read_bytes())])
    expected = body["predictions"][0]["label"]
    png = tmp_path / "upload.png"  # a PNG too, to exercise another decoder
    Image.open(TEST_IMAGES[0]).save(png)
    with sync_playwright() as p:
        browser = launch_chromium(p)
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        external: list[str] = []
        page.on("request", lambda r: external.append(r.url)
                if not r.url.startswith((f"http://127.0.0.1:{client.port}", "blob:", "data:"))
                else None)
        page.goto(f"http://127.0.0.1:{client.port}/")
        page.wait_for_selector("#facts tr")
        assert "validation accuracy" in page.locator("#facts").inner_text()
        page.set_input_files("#files", [str(TEST_IMAGES[0]), str(png)])
        page.wait_for_function("document.querySelectorAll('.result').length === 2")
        labels = page.locator(".result .label").all_inner_texts()
        assert all(text.startswith(expected) for text in labels), labels
        assert page.locator(".result .bar").count() == 4
        page.set_input_files("#files", [str(Path(__file__))])
        page.wait_for_selector("#status.error")
        assert "not an image" in page.locator("#status").inner_text()
        page.screenshot(path=str(tmp_path / "page.png"))
        browser.close()
    assert external == []


def test_busy_port_is_one_error_line(trained):
    _, model_dir = trained
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "headstart", "serve", str(model_dir),
                            "--port", str(port)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith("error: --port: cannot listen on 127.0.0.1:") \
        and len(r.stderr.strip().splitlines()) == 1, r.stderr
