"""Start-up time, throughput, latency and memory of ``catsdogs serve``, on loopback.

    python benchmarks/serve_bench.py [--model MODEL_DIR] [--photos DIR] [--requests 400]

Without ``--model`` it first builds one in a temporary folder outside the repository:
``catsdogs prepare`` on up to 400 of the photos (128 px), then ``catsdogs train --epochs 1``
(the default network), which also writes ``model.onnx``. Then:

1. start-up: ``catsdogs serve --port 0`` in a fresh process, time until it prints its address
   and until ``GET /health`` answers (median of 3), with the CPU seconds the process used;
2. ``POST /predict`` with one photo a request (the photos in turn), from 1 client and from 8
   concurrent clients (threads, each with its own keep-alive connection): requests/s and
   p50/p99 latency;
3. a burst of 1,000 requests from 100 clients at once against the default ``--max-queue``:
   how many were answered 200 and how many 503, and the server's peak resident memory
   (``VmHWM`` from ``/proc``) against its memory before the burst.

The clients run on the same machine as the server and share its cores. Prints a Markdown
section for ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import http.client
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

SHARED = Path("/work/shared/data/catsdogs/train")
BIN = Path(sys.executable).parent
BOUNDARY = "catsdogs-bench"


def build_model(photos: Path, work: Path) -> Path:
    """A default-network model trained for one epoch on up to 400 of ``photos``."""
    subset = work / "photos"
    for folder in sorted(p for p in photos.iterdir() if p.is_dir()):
        (subset / folder.name).mkdir(parents=True)
        for path in sorted(folder.glob("*.jpg"))[:200]:
            (subset / folder.name / path.name).symlink_to(path.resolve())
    catsdogs = str(BIN / "catsdogs")
    subprocess.run([catsdogs, "prepare", str(subset), "--out", str(work / "prepared"),
                    "--size", "128"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run([catsdogs, "train", "--data", str(work / "prepared"), "--out",
                    str(work / "model"), "--epochs", "1"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return work / "model"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory_mib(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise ValueError(f"no {key} for process {pid}")


def reset_peak(pid: int) -> None:
    """Start VmHWM again from the current resident memory (Linux 4.0 and later)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        pass


class Server:
    """``catsdogs serve --port 0`` in a subprocess."""

    def __init__(self, model: Path, *options: str) -> None:
        self.started = time.perf_counter()
        self.process = subprocess.Popen(
            [str(BIN / "catsdogs"), "serve", "--model", str(model), "--port", "0", *options],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = self.process.stdout.readline()
        self.printed = time.perf_counter() - self.started
        self.cpu_at_ready = cpu_seconds(self.process.pid)
        address = line.split(" at ")[1].split()[0].split("//")[1].rstrip("/")
        self.host, port = address.rsplit(":", 1)
        self.port = int(port)

    def connection(self) -> http.client.HTTPConnection:
        """A keep-alive connection that sends at once (TCP_NODELAY): http.client sends a
        large body apart from its headers, and with Nagle's algorithm and delayed ACKs each
        request would then wait 40 ms for nothing."""
        connection = http.client.HTTPConnection(self.host, self.port, timeout=120)
        connection.connect()
        connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return connection

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=120)


def form(name: str, data: bytes) -> bytes:
    return (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"{name}\"\r\nContent-Type: image/jpeg\r\n\r\n").encode() + data + \
        f"\r\n--{BOUNDARY}--\r\n".encode()


def post(connection: http.client.HTTPConnection, body: bytes, query: str = ""
         ) -> tuple[int, float]:
    start = time.perf_counter()
    connection.request("POST", "/predict" + query, body,
                       {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
    answer = connection.getresponse()
    answer.read()
    return answer.status, time.perf_counter() - start


def load(server: Server, bodies: list[bytes], clients: int, total: int, query: str = ""
         ) -> dict:
    """``total`` requests from ``clients`` threads with a connection each."""
    share = [list(range(k, total, clients)) for k in range(clients)]
    barrier = threading.Barrier(clients)

    def client(numbers: list[int]) -> list[tuple[int, float]]:
        connection = server.connection()
        barrier.wait()
        results = []
        for number in numbers:
            try:
                results.append(post(connection, bodies[number % len(bodies)], query))
            except (OSError, http.client.HTTPException):
                results.append((0, 0.0))
                connection.close()
                connection = server.connection()  # the server closed it after a 503
        connection.close()
        return results

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = [r for part in pool.map(client, share) for r in part]
    wall = time.perf_counter() - start
    latencies = sorted(seconds for status, seconds in results if status == 200)
    statuses = [status for status, _ in results]
    return {
        "clients": clients, "requests": total, "query": query, "wall": wall,
        "ok": statuses.count(200), "busy": statuses.count(503),
        "failed": total - statuses.count(200) - statuses.count(503),
        "rate": statuses.count(200) / wall,
        "p50": statistics.quantiles(latencies, n=100)[49] if len(latencies) > 1 else None,
        "p99": statistics.quantiles(latencies, n=100)[98] if len(latencies) > 1 else None,
    }


def start_up(model: Path, repeats: int = 3) -> list[tuple[float, float, float]]:
    """(seconds to the printed address, seconds to the first /health answer, CPU seconds)."""
    runs = []
    for _ in range(repeats):
        server = Server(model)
        connection = server.connection()
        connection.request("GET", "/health")
        connection.getresponse().read()
        runs.append((server.printed, time.perf_counter() - server.started, server.cpu_at_ready))
        connection.close()
        assert server.stop() == 0
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="model folder (default: train one)")
    parser.add_argument("--photos", type=Path, default=SHARED, help="class folders of JPEGs")
    parser.add_argument("--requests", type=int, default=400,
                        help="requests of each throughput run")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as work:
        model = args.model or build_model(args.photos, Path(work))
        paths = sorted(args.photos.glob("*/*.jpg"))[:: max(1, len(list(
            args.photos.glob("*/*.jpg"))) // 50)][:50]
        bodies = [form(p.name, p.read_bytes()) for p in paths]
        starts = start_up(model)
        server = Server(model)
        load(server, bodies, 8, 64)  # warm up
        runs = [load(server, bodies, clients, args.requests) for clients in (1, 8)]
        runs.append(load(server, bodies, 1, 50, "?heatmap=1"))
        bursts = [burst(server, bodies, "default --max-queue 16")]
        server.stop()
        server = Server(model, "--max-queue", "1000")
        load(server, bodies, 8, 64)  # warm up
        bursts.append(burst(server, bodies, "--max-queue 1000: every request queued"))
        exit_code = server.stop()
    described = (f"{args.model}" if args.model else "trained by the script (default network, "
                 "128 px, 1 epoch on 400 photos)")
    report(args, described, starts, runs, bursts, exit_code, load_before,
           sum(len(b) for b in bodies) / len(bodies))


def burst(server: Server, bodies: list[bytes], setting: str) -> dict:
    """1,000 requests from 100 clients at once, with the server's memory around them."""
    before = memory_mib(server.process.pid, "VmRSS")
    reset_peak(server.process.pid)
    result = load(server, bodies, 100, 1000)
    peak = memory_mib(server.process.pid, "VmHWM")
    return {**result, "setting": setting, "before": before, "peak": peak,
            "after": memory_mib(server.process.pid, "VmRSS")}


def report(args, model, starts, runs, bursts, exit_code, load_before, body_size):
    print("## serve\n")
    command = "python benchmarks/serve_bench.py" + (f" --model {args.model}" if args.model
                                                    else "")
    print(f"Measured by `{command}` on {platform.node()}: {platform.machine()}, "
          f"{os.cpu_count()} CPU cores, Python {platform.python_version()}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. "
          f"Load average {load_before:.1f} before and {os.getloadavg()[0]:.1f} after. Server "
          "and clients on the same machine, over loopback.\n")
    print(f"Model: {model}, engine onnx. Each request: one JPEG, {body_size / 1024:.0f} KiB "
          "on average, as multipart/form-data, on a keep-alive connection per client.\n")
    printed = statistics.median(s[0] for s in starts)
    health = statistics.median(s[1] for s in starts)
    cpu = statistics.median(s[2] for s in starts)
    print(f"**Start-up** (fresh process, median of {len(starts)}): address printed after "
          f"{printed:.2f} s, first /health answered after {health:.2f} s; {cpu:.2f} CPU "
          "seconds used by then.\n")
    print("| clients | requests | answered 200 | requests/s | p50 ms | p99 ms |")
    print("|---:|---:|---:|---:|---:|---:|")
    for run in runs:
        print(f"| {run['clients']}{' (?heatmap=1)' if run['query'] else ''} | "
              f"{run['requests']} | {run['ok']} | {run['rate']:.0f} | "
              f"{1000 * run['p50']:.1f} | {1000 * run['p99']:.1f} |")
    print("\n**Bursts** of 1,000 requests from 100 clients at once (default --workers):\n")
    print("| server | answered 200 | 503 + Retry-After | failed | wall s | RSS before MiB | "
          "peak RSS MiB | RSS after MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for b in bursts:
        print(f"| {b['setting']} | {b['ok']} | {b['busy']} | {b['failed']} | "
              f"{b['wall']:.1f} | {b['before']:.0f} | {b['peak']:.0f} | {b['after']:.0f} |")
    print(f"\nPeak RSS is VmHWM from /proc, reset just before each burst. SIGTERM after "
          f"the last burst: exit {exit_code}.")


if __name__ == "__main__":
    main()
