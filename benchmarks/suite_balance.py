"""How evenly the test suite's xdist workers were kept busy: each worker's busy seconds from
the log of ``pytest -v --durations=0`` (its ``[gwN] ... PASSED <test>`` lines and the
setup, call and teardown durations), and the test each worker ended on.

Example:
    python -m pytest -v --durations=0 -p no:cacheprovider > /tmp/suite.log
    python benchmarks/suite_balance.py /tmp/suite.log
"""

from __future__ import annotations

import argparse
import re
from collections import defaultdict
from pathlib import Path

DURATION = re.compile(r"^([\d.]+)s (?:setup|call|teardown)\s+(\S+)$", re.MULTILINE)
RESULT = re.compile(r"^\[(gw\d+)\] \[\s*\d+%\] \w+ (\S+)", re.MULTILINE)
SUMMARY = re.compile(r"=+ (.*) in ([\d.]+)s")


def worker_busy(log: str) -> dict[str, tuple[float, list[str]]]:
    """For each worker: its busy seconds and the tests it ran, in order."""
    seconds: dict[str, float] = defaultdict(float)
    for match in DURATION.finditer(log):
        seconds[match.group(2)] += float(match.group(1))
    tests: dict[str, list[str]] = defaultdict(list)
    for match in RESULT.finditer(log):
        tests[match.group(1)].append(match.group(2))
    return {worker: (sum(seconds.get(test, 0.0) for test in ran), ran)
            for worker, ran in sorted(tests.items())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log", type=Path, help="the output of pytest -v --durations=0")
    args = parser.parse_args(argv)
    log = args.log.read_text()
    busy = worker_busy(log)
    if not busy:
        parser.error(f"{args.log}: no [gwN] result lines (run pytest with -v and xdist)")
    for worker, (seconds, ran) in busy.items():
        print(f"{worker}: {len(ran)} tests, busy {seconds:.0f} s, last {ran[-1]}")
    if summary := SUMMARY.search(log):
        print(f"{summary.group(1)}, wall {float(summary.group(2)):.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
