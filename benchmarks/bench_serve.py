"""Throughput and latency of ``POST /predict``: requests per second and p50/p95 latency on the CPU.

The server (uvicorn, the real ``medpipe.serve`` app) runs in this process on a free ``127.0.0.1`` port; a bounded
load loop (``--requests`` in total, at most ``--seconds``, ``--concurrency`` client threads, each with its own
``httpx`` connection) uploads a real chest X-ray. Baseline in the same run: the same prediction called directly
(``ServedModel.predict``, no HTTP), so the ratio is the cost of the web layer.

``MODEL`` is a served model (``runs:/<id>/model``, ``models:/...`` or a run folder); without one, the shipped
``pipelines/pneumonia_xray.yaml`` is served with freshly initialised weights (speed does not depend on them).

Usage::

    python benchmarks/bench_serve.py [MODEL] [--image FILE] [--requests 200] [--concurrency 2] [--seconds 60]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _untrained_run(pipeline: Path, folder: Path) -> str:
    import torch
    import yaml

    from medpipe.config import load_config, resolved_dict
    from medpipe.nets import build_net

    cfg = load_config(pipeline)
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "config.resolved.yaml").write_text(yaml.safe_dump(resolved_dict(cfg), sort_keys=False))
    torch.manual_seed(0)
    torch.save({"net": build_net(cfg.net).state_dict()}, folder / "checkpoints" / "best_untrained.pt")
    classes = getattr(cfg.data, "classes", None)
    (folder / "metrics.json").write_text(json.dumps({"final": {}, "classes": classes}))
    return str(folder)


def _pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", nargs="?", default=None)
    ap.add_argument("--pipeline", default=str(ROOT / "pipelines" / "pneumonia_xray.yaml"),
                    help="pipeline served untrained when no MODEL is given")
    ap.add_argument("--image", default=None, help="image to upload (default: a real Kermany chest X-ray)")
    ap.add_argument("--requests", type=int, default=200, help="total requests of the load loop (bound)")
    ap.add_argument("--seconds", type=float, default=60.0, help="time bound of the load loop")
    ap.add_argument("--concurrency", type=int, default=2, help="client threads")
    ap.add_argument("--tracking-uri", default=None)
    args = ap.parse_args()

    import httpx
    import uvicorn

    from medpipe.paths import data_root
    from medpipe.serve.app import create_app
    from medpipe.serve.images import decode_upload
    from medpipe.serve.model import load_model

    tmp = tempfile.TemporaryDirectory()
    source = args.model or _untrained_run(Path(args.pipeline), Path(tmp.name) / "run")
    image = Path(args.image) if args.image else sorted(
        (data_root() / "kermany_pneumonia_cxr" / "test" / "PNEUMONIA").glob("*.jpeg"))[0]
    data = image.read_bytes()
    model = load_model(source, args.tracking_uri)

    # baseline: the prediction alone, in process
    decoded = decode_upload(data)
    for _ in range(3):
        model.predict(decoded)
    direct = []
    for _ in range(min(args.requests, 50)):
        t = time.perf_counter()
        model.predict(decoded)
        direct.append(time.perf_counter() - t)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(model), host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port}/predict"

    latencies, errors = [], []
    lock = threading.Lock()
    issued = [0]
    deadline = time.perf_counter() + args.seconds

    def worker():
        with httpx.Client(timeout=30) as client:
            client.post(url, files={"file": (image.name, data)})  # warm-up, not counted
            while True:
                with lock:
                    if issued[0] >= args.requests or time.perf_counter() > deadline:
                        return
                    issued[0] += 1
                t = time.perf_counter()
                r = client.post(url, files={"file": (image.name, data)})
                dt = time.perf_counter() - t
                with lock:
                    (latencies if r.status_code == 200 else errors).append(dt)

    threads = [threading.Thread(target=worker) for _ in range(args.concurrency)]
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t0
    server.should_exit = True
    tmp.cleanup()

    cfg = model.cfg
    print(f"model: {cfg.name} ({cfg.net.name}, {cfg.task}) from {args.model or args.pipeline + ' (untrained)'}")
    print(f"image: {image.name} ({len(data)} bytes); {os.cpu_count()} CPUs, torch threads "
          f"{__import__('torch').get_num_threads()}; concurrency {args.concurrency}")
    print(f"direct predict (no HTTP), n={len(direct)}: p50 {1000 * statistics.median(direct):.1f} ms, "
          f"p95 {1000 * _pct(direct, 95):.1f} ms")
    if not latencies:
        print(f"no successful request ({len(errors)} errors)")
        return
    rps = len(latencies) / wall
    print(f"POST /predict, n={len(latencies)} ok, {len(errors)} errors, {wall:.1f} s: {rps:.1f} requests/s, "
          f"p50 {1000 * statistics.median(latencies):.1f} ms, p95 {1000 * _pct(latencies, 95):.1f} ms")
    print(f"ratio: HTTP p50 / direct p50 = {statistics.median(latencies) / statistics.median(direct):.2f}")


if __name__ == "__main__":
    main()
