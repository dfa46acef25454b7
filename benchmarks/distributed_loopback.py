"""Images/s of `catsdogs train` on one worker vs two MultiWorkerMirroredStrategy workers on
127.0.0.1 of the same machine.

    python benchmarks/distributed_loopback.py PREPARED_DIR [--epochs 3] [train options...]

Runs the same `catsdogs train` command three ways, one after the other: alone (no TF_CONFIG),
then as two workers with their own TF_CONFIG on free loopback ports. Training images/s is
the number of training photos per epoch over the epoch's seconds (from history.csv), the
first epoch (tracing, warm-up) left out. Per-replica --batch-size is the same in both runs,
so two workers take global batches twice as large.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from train_rate import images_per_second  # benchmarks/train_rate.py, beside this file


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def run(workers: int, data: str, out: Path, train_args: list[str], timeout: int) -> float:
    command = [sys.executable, "-m", "catsdogs", "train", "--data", data, *train_args]
    env = {k: v for k, v in os.environ.items() if k.lower() not in {"http_proxy", "https_proxy"}}
    env["no_proxy"] = "127.0.0.1,localhost"
    started = time.perf_counter()
    if workers == 1:
        env.pop("TF_CONFIG", None)
        subprocess.run([*command, "--out", str(out / "w0")], check=True, env=env,
                       timeout=timeout, stdout=subprocess.DEVNULL)
    else:
        addresses = [f"127.0.0.1:{port}" for port in free_ports(workers)]
        processes = []
        for index in range(workers):
            env["TF_CONFIG"] = json.dumps({"cluster": {"worker": addresses},
                                           "task": {"type": "worker", "index": index}})
            processes.append(subprocess.Popen([*command, "--out", str(out / f"w{index}")],
                                              env=dict(env), stdout=subprocess.DEVNULL))
        try:
            for process in processes:
                if process.wait(timeout=timeout) != 0:
                    raise SystemExit(f"a worker failed (exit {process.returncode})")
        finally:
            for process in processes:
                if process.poll() is None:
                    process.kill()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--timeout", type=int, default=1800)
    args, train_args = parser.parse_known_args()
    train_args = ["--epochs", str(args.epochs), *train_args]
    with tempfile.TemporaryDirectory() as scratch:
        for workers in (1, 2):
            out = Path(scratch) / f"run{workers}"
            wall = run(workers, args.data, out, train_args, args.timeout)
            rate, info, seconds = images_per_second(out / "w0")
            print(f"{workers} worker(s): {rate:7.1f} training images/s, "
                  f"{info['distribution']['global_batch_size']} photos per step (epoch seconds "
                  f"{', '.join(f'{s:.1f}' for s in seconds)}; {wall:.0f} s for the command)",
                  flush=True)


if __name__ == "__main__":
    main()
