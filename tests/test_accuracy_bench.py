"""benchmarks/accuracy_bench.py's paired comparison: recipe minus default, seed by seed."""

from __future__ import annotations

import json

import pytest

from tests.helpers import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("accuracy_bench")


def test_paired_difference_by_hand(bench):
    mine = {1: 0.90, 2: 0.92, 3: 0.88, 4: 0.5}  # seed 4: the baseline did not run it
    baseline = {1: 0.89, 2: 0.90, 3: 0.89}
    # differences +1, +2, -1: mean 0.667, sd 1.528, t(2) 4.303 → 4.303 × 1.528 / √3 = 3.79
    assert bench.paired_difference(mine, baseline) == "+0.67 ± 3.79 (+1.00, +2.00, -1.00)"
    assert bench.paired_difference({1: 0.9}, {1: 0.875}) == "+2.50 (one seed)"
    assert bench.paired_difference({1: 0.9}, {2: 0.9}) == "–"


def test_paired_table_needs_the_baseline_and_skips_failed_runs(bench):
    Run = bench.Run
    runs = [Run("default", 1, held_out=0.8, other=0.7, held_out_tta=0.85, other_tta=0.75,
                wall_s=100),
            Run("long", 1, held_out=0.82, other=0.7, held_out_tta=0.84, other_tta=0.77,
                wall_s=150),
            Run("long", 2, error="train exit 1")]
    table = bench.paired_table(runs)
    assert table.splitlines()[-1] == ("| long | -1.00 (one seed) | +2.00 (one seed) "
                                      "| +2.00 (one seed) | +0.00 (one seed) | 1.50× |")
    assert bench.paired_table(runs[1:]) == ""


def test_paired_from_a_former_json(bench, tmp_path, capsys):
    runs = [bench.Run("default", seed, held_out_tta=0.9, wall_s=60) for seed in (1, 2)]
    runs += [bench.Run("wide", seed, held_out_tta=value, wall_s=90)
             for seed, value in ((1, 0.91), (2, 0.93))]
    saved = tmp_path / "runs.json"
    saved.write_text(json.dumps([run.__dict__ for run in runs]))
    assert bench.main(["--paired-from", str(saved)]) == 0
    # differences +1, +3: mean 2, sd 1.414, t(1) 12.706 → 12.706 × 1.414 / √2 = 12.71
    assert "| wide | +2.00 ± 12.71 (+1.00, +3.00) | – | – | – | 1.50× |" in capsys.readouterr().out
