"""Load test of ``multihead serve`` on loopback: requests/s and latency percentiles of ``POST /v1/classify``.

Starts the real server as a subprocess (``python -m multihead serve``) on a free port of 127.0.0.1, waits for
``/healthz``, warms it up, then for each concurrency level runs that many client threads, each sending one
image per request (the bundled example images, in turn) over a kept-alive connection, until ``--requests``
requests are done or ``--duration`` seconds have passed, whichever comes first. The server's batching
counters before and after each level give the mean batch size. The server is stopped at the end, also on
errors. Nothing leaves the machine.

The server classifies with the library's default :class:`multihead.InferenceConfig`, as ``multihead serve``
does; ``--inference '{"backend": "torch"}'`` (any of its fields, as JSON) starts it through
:func:`multihead.serve.run_server` with that config instead, and the report says which config served.

Writes ``benchmarks/results/serve-<hardware slug>.json``, or ``serve-<slug>-<name>.json`` with ``--name``.

Usage::

    .venv/bin/python benchmarks/load.py [--model PATH] [--concurrency 1 4 16] [--requests 300] [--duration 30]
    .venv/bin/python benchmarks/load.py --inference '{"backend": "torch"}' --name torch
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch

import multihead
from multihead.benchmark import hardware_slug, machine_info
from multihead.inference import default_model_path

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((Path(multihead.__file__).parent / "examples").glob("*.jpg"))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(model: Path, port: int, max_batch: int | None, batch_wait_ms: float,
                 inference: dict[str, Any] | None, log: Any) -> subprocess.Popen:
    """``multihead serve``, or the same server through ``run_server`` when the inference config is pinned."""
    if inference is None:
        command = [sys.executable, "-m", "multihead", "serve", "--model", str(model), "--host", "127.0.0.1",
                   "--port", str(port), "--batch-wait-ms", str(batch_wait_ms)]
        command += [] if max_batch is None else ["--max-batch", str(max_batch)]
    else:
        code = ("import json, sys\n"
                "from multihead.inference import InferenceConfig\n"
                "from multihead.serve import ServeSettings, run_server\n"
                "model, port, max_batch, wait, inference = sys.argv[1:]\n"
                "run_server(model, host='127.0.0.1', port=int(port),"
                " inference=InferenceConfig(**json.loads(inference)),"
                " settings=ServeSettings(max_batch=json.loads(max_batch), batch_wait_ms=float(wait)))\n")
        command = [sys.executable, "-c", code, str(model), str(port), json.dumps(max_batch), str(batch_wait_ms),
                   json.dumps(inference)]
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)


def wait_until_up(url: str, server: subprocess.Popen, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with code {server.returncode} before it answered")
        try:
            if httpx.get(f"{url}/healthz", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the server did not answer {url}/healthz within {timeout_s:.0f} s")


def _cpu_seconds(server_pid: int) -> dict[str, float] | None:
    """CPU time used so far by the whole machine, the server process and this process (Linux ``/proc``)."""
    try:
        tick = os.sysconf("SC_CLK_TCK")
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        busy = sum(fields) - fields[3] - fields[4]  # all but idle and iowait
        stat = Path(f"/proc/{server_pid}/stat").read_text().rsplit(")", 1)[1].split()
        server = int(stat[11]) + int(stat[12])  # utime + stime
    except (OSError, ValueError, IndexError):
        return None
    own = os.times()
    return {"machine": busy / tick, "server": server / tick, "clients": own.user + own.system}


def run_level(url: str, concurrency: int, max_requests: int, max_seconds: float,
              payloads: list[tuple[str, bytes]], server_pid: int) -> dict[str, Any]:
    """``concurrency`` clients share a budget of ``max_requests`` requests and ``max_seconds`` seconds."""
    lock, issued = threading.Lock(), [0]
    latencies: list[float] = []
    failures: list[str] = []
    stop_at = time.perf_counter() + max_seconds

    def client(worker: int) -> None:
        with httpx.Client(base_url=url, timeout=120.0) as session:
            while time.perf_counter() < stop_at:
                with lock:
                    if issued[0] >= max_requests:
                        return
                    number = issued[0]
                    issued[0] += 1
                name, data = payloads[(number + worker) % len(payloads)]
                began = time.perf_counter()
                try:
                    response = session.post("/v1/classify", files={"files": (name, data, "image/jpeg")})
                    ok = response.status_code == 200 and response.json()["results"][0]["source"] == name
                    problem = None if ok else f"HTTP {response.status_code}: {response.text[:200]}"
                except httpx.HTTPError as err:
                    problem = f"{type(err).__name__}: {err}"
                elapsed = time.perf_counter() - began
                with lock:
                    (latencies.append(elapsed) if problem is None else failures.append(problem))

    before = httpx.get(f"{url}/healthz").json()["batching"]
    cpu_before = _cpu_seconds(server_pid)
    began = time.perf_counter()
    threads = [threading.Thread(target=client, args=(worker,)) for worker in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    cpu_after = _cpu_seconds(server_pid)
    after = httpx.get(f"{url}/healthz").json()["batching"]
    cpu = None
    if cpu_before and cpu_after:  # "others": what the rest of the machine took from the cores meanwhile
        used = {key: cpu_after[key] - cpu_before[key] for key in cpu_before}
        cpu = {"available": wall * (os.cpu_count() or 1), "server": used["server"], "clients": used["clients"],
               "others": max(0.0, used["machine"] - used["server"] - used["clients"])}
    batches = after["batches"] - before["batches"]
    ms = np.array(latencies) * 1000.0
    percentile = (lambda q: float(np.percentile(ms, q))) if len(ms) else (lambda q: None)
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "failed": len(failures),
        "failures": failures[:5],
        "seconds": wall,
        "requests_per_second": len(latencies) / wall if wall > 0 else None,
        "latency_ms_p50": percentile(50),
        "latency_ms_p90": percentile(90),
        "latency_ms_p99": percentile(99),
        "latency_ms_max": float(ms.max()) if len(ms) else None,
        "forward_passes": batches,
        "mean_batch_size": (after["images"] - before["images"]) / batches if batches else None,
        "largest_batch_so_far": after["largest_batch"],
        "cpu_seconds": cpu,
    }


def _describe(level: dict[str, Any]) -> str:
    text = (f"concurrency {level['concurrency']:3}: {level['requests']} requests in {level['seconds']:.1f} s, "
            f"{level['requests_per_second']:.2f} requests/s, p50 {level['latency_ms_p50']:.0f} ms, "
            f"p90 {level['latency_ms_p90']:.0f} ms, p99 {level['latency_ms_p99']:.0f} ms, "
            f"mean batch {level['mean_batch_size']:.2f}, {level['failed']} failed")
    cpu = level["cpu_seconds"]
    if cpu:
        text += (f"; CPU seconds: server {cpu['server']:.1f}, clients {cpu['clients']:.1f}, "
                 f"other processes {cpu['others']:.1f}, of {cpu['available']:.1f}")
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=default_model_path(), help="checkpoint to serve")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16], help="clients at once, per level")
    parser.add_argument("--requests", type=int, default=300, help="most requests per level")
    parser.add_argument("--duration", type=float, default=30.0, help="most seconds per level")
    parser.add_argument("--max-batch", type=int, default=None, help="default: the server's (timed at start)")
    parser.add_argument("--batch-wait-ms", type=float, default=5.0)
    parser.add_argument("--inference", type=json.loads, default=None,
                        help='InferenceConfig fields as JSON, e.g. \'{"backend": "torch"}\' (default: the library\'s)')
    parser.add_argument("--name", default=None, help="suffix of the result file: serve-<slug>-<name>.json")
    parser.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/serve-<slug>.json")
    args = parser.parse_args()
    if args.model is None or not Path(args.model).is_file():
        parser.error(f"no model to serve at {args.model}; pass --model")
    payloads = [(path.name, path.read_bytes()) for path in EXAMPLES]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("stopped by SIGTERM"))  # so that the server is stopped too
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    load_at_start = os.getloadavg()[0]
    with tempfile.TemporaryFile("w+") as log:
        server = start_server(args.model, port, args.max_batch, args.batch_wait_ms, args.inference, log)
        try:
            wait_until_up(url, server)
            run_level(url, max(args.concurrency), max(args.concurrency), 60.0, payloads, server.pid)  # warm-up
            levels = []
            for concurrency in args.concurrency:
                level = run_level(url, concurrency, args.requests, args.duration, payloads, server.pid)
                levels.append(level)
                print(_describe(level), flush=True)
            health = httpx.get(f"{url}/healthz").json()
        finally:
            server.terminate()
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
            log.seek(0)
            server_log = log.read()
    if any(level["failed"] for level in levels):
        print(server_log[-3000:], file=sys.stderr)
    machine = machine_info("cpu")
    machine.pop("load_average_1m", None)
    machine.update(load_average_1m_at_start=load_at_start, load_average_1m_at_end=os.getloadavg()[0],
                   cpu_count=os.cpu_count())
    report = {
        "what": "POST /v1/classify, one image per request, multihead serve on 127.0.0.1, clients in another "
                "process on the same machine",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "multihead": multihead.__version__,
        "torch": torch.__version__,
        "machine": machine,
        "model": {"file": Path(args.model).name, **health["model"]},
        "server": {"max_batch_asked": args.max_batch, "max_batch": health["batching"]["max_batch"],
                   "measured_images_per_second": health["batching"]["measured_images_per_second"],
                   "batch_wait_ms": args.batch_wait_ms,
                   "started_as": "multihead serve" if args.inference is None else "multihead.serve.run_server",
                   "inference_asked": args.inference},
        "images": [{"name": name, "bytes": len(data)} for name, data in payloads],
        "limits": {"requests_per_level": args.requests, "seconds_per_level": args.duration},
        "levels": levels,
    }
    suffix = f"-{args.name}" if args.name else ""
    out = args.out or REPO / "benchmarks" / "results" / f"serve-{hardware_slug('cpu')}{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
