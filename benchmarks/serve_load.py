"""Issue 8: `headstart serve` under load on this machine, against the same model called
in-process in the same run (the floor any server adds overhead to).

Trains a model on the shipped safari examples, starts the server on a free 127.0.0.1 port
and measures: single-image latency (one client, sequential), single-image requests from 8
concurrent clients (the batching case), and 8-image requests from 4 concurrent clients.

    python benchmarks/serve_load.py [--requests 200]
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from common import parser

REPO = Path(__file__).resolve().parents[1]


def post(port: int, files: list[bytes]) -> tuple[int, float]:
    boundary = uuid.uuid4().hex
    body = b"".join(f'--{boundary}\r\nContent-Disposition: form-data; name="files"; '
                    f'filename="{i}.jpg"\r\n\r\n'.encode() + f + b"\r\n"
                    for i, f in enumerate(files)) + f"--{boundary}--\r\n".encode()
    t = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    conn.request("POST", "/predict", body,
                 {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    r = conn.getresponse()
    r.read()
    conn.close()
    return r.status, time.perf_counter() - t


def load(port: int, images: list[bytes], n: int, clients: int, per_request: int
         ) -> dict[str, float]:
    def one(i: int) -> tuple[int, float]:
        return post(port, [images[(i * per_request + j) % len(images)]
                           for j in range(per_request)])
    t = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, range(n)))
    wall = time.perf_counter() - t
    lat = sorted(s for _, s in results)
    return {"errors": sum(c != 200 for c, _ in results), "p50_ms": 1000 * statistics.median(lat),
            "p99_ms": 1000 * lat[max(0, int(0.99 * len(lat)) - 1)],
            "images_per_s": n * per_request / wall}


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--requests", type=int, default=200)
    args = ap.parse_args()
    from headstart import Classifier
    from headstart.backbone.features import prepare_image

    work = Path(tempfile.mkdtemp(prefix="hs-serve-"))
    clf = Classifier(head="linear").fit(REPO / "examples" / "safari" / "train")
    model = clf.save(work / "model")
    files = sorted((REPO / "examples" / "safari" / "test").rglob("*.jpg"))
    images = [f.read_bytes() for f in files]
    x = np.stack([prepare_image(f, clf.backbone_.preprocess) for f in files])
    clf.predict_arrays(x[:1])
    t = time.perf_counter()
    for i in range(30):
        clf.predict_arrays(x[i % len(x)][None])
    single = (time.perf_counter() - t) / 30
    t = time.perf_counter()
    for _ in range(3):
        clf.predict_arrays(x)
    batch_rate = 3 * len(x) / (time.perf_counter() - t)
    decode = time.perf_counter()
    for f in files:
        prepare_image(f, clf.backbone_.preprocess)
    decode = (time.perf_counter() - decode) / len(files)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "headstart", "serve", str(model),
                               "--port", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env=os.environ.copy())
    try:
        while True:
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                c.request("GET", "/health")
                if c.getresponse().status == 200:
                    break
            except OSError:
                time.sleep(0.3)
        for _ in range(5):
            post(port, images[:1])
        seq = load(port, images, 100, 1, 1)
        conc = load(port, images, args.requests, 8, 1)
        batches = load(port, images, max(8, args.requests // 8), 4, 8)
    finally:
        server.terminate()
        server.wait(30)
    print(f"in-process (same run): one image {1000 * single:.1f} ms compute + "
          f"{1000 * decode:.1f} ms decode; batch of {len(x)}: {batch_rate:.1f} images/s")
    print(json.dumps({"sequential_single": seq, "concurrent_8_single": conc,
                      "concurrent_4_batches_of_8": batches}, indent=1))
    ratio = seq["p50_ms"] / 1000 / (single + decode)
    print(f"single-image p50 {seq['p50_ms']:.1f} ms = {ratio:.2f} x in-process decode+compute")
    print(f"8 concurrent clients: {conc['images_per_s']:.1f} images/s = "
          f"{conc['images_per_s'] / batch_rate:.2f} x in-process batch throughput; "
          f"p50 {conc['p50_ms']:.0f} ms, p99 {conc['p99_ms']:.0f} ms, errors {conc['errors']}")
    print(f"batches of 8, 4 clients: {batches['images_per_s']:.1f} images/s = "
          f"{batches['images_per_s'] / batch_rate:.2f} x in-process")


if __name__ == "__main__":
    main()
