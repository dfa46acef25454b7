"""Recipes × seeds → held-out accuracy (mean ± spread), accuracy on another source, time, photos/s.

Drives the public CLI in subprocesses, so it measures whatever ``catsdogs train`` does now and
works with whatever options it has later. A recipe is a name and a list of ``catsdogs train``
options; the baseline (``default``: no options, the current default recipe) is always run in
the same session, beside the others.

For each seed: ``catsdogs prepare SOURCE --test-fraction F --seed SEED`` (so every seed has its
own held-out photos, which ``train`` never sees), then for each recipe ``catsdogs train --seed
SEED <recipe options>``, ``catsdogs evaluate`` on the prepared test split and, with ``--other``,
on a second folder of photos from another source (scored only). The table gives both of
evaluate's figures: the photo alone, and the six test-time views it averages by default. A
second table sets each recipe against the default seed by seed (the same split, the same
held-out photos): single runs differ by several points from seed to seed, two recipes on one
seed much less, so the mean difference and its 95% interval say whether a recipe gained.
``--paired-from RUNS.json`` prints that table from a former ``--json`` (runs of several
benches may be joined into one list first). All work happens in ``--work`` (a temporary
folder by default), never in the repository.

Example (the full-scale run for issue 12; hours on 2 cores):

    python benchmarks/accuracy_bench.py --source /work/shared/data/catsdogs/train \\
        --other /work/shared/data/catsdogs/other --seeds 1,2,3 \\
        --recipe "pipeline-aug: --augment pipeline" --markdown /tmp/acc/bench.md

A quick check that the tooling works (built-in sample, tiny model, one epoch):

    python benchmarks/accuracy_bench.py --source sample --seeds 1,2 --size 32 \\
        --common "--epochs 1 --blocks 2 --filters 4" --recipe "no-aug: --no-augment"
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Recipe:
    name: str
    flags: list[str]
    size: int | None = None  # prepare --size for this recipe; None: the bench's --size


@dataclass
class Run:
    recipe: str
    seed: int
    held_out: float | None = None
    other: float | None = None
    held_out_tta: float | None = None  # evaluate's default: the views of each photo averaged
    other_tta: float | None = None
    wall_s: float = 0.0
    cpu_s: float = 0.0
    epochs: int = 0
    photos_per_s: float | None = None
    error: str = ""
    extra: dict = field(default_factory=dict)


def parse_recipe(text: str) -> Recipe:
    """'name: --flag value --other' → Recipe(name, [flags]); 'name@128: ...' also prepares
    the photos at 128 px for this recipe (the others use --size)."""
    name, _, flags = text.partition(":")
    name, _, size = name.partition("@")
    if not name.strip():
        raise argparse.ArgumentTypeError(f"recipe needs a name before ':': {text!r}")
    if size.strip() and not size.strip().isdigit():
        raise argparse.ArgumentTypeError(f"a recipe's size is a whole number: {text!r}")
    return Recipe(name.strip(), shlex.split(flags), int(size) if size.strip() else None)


def catsdogs_command() -> list[str]:
    """The catsdogs CLI of this interpreter's environment (the console script, or -m)."""
    script = Path(sys.executable).with_name("catsdogs")
    return [str(script)] if script.exists() else [sys.executable, "-m", "catsdogs"]


def run_cli(args: list[str], log: Path) -> tuple[int, float, float]:
    """Run ``catsdogs ARGS``; (exit code, wall seconds, CPU seconds of the child)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    with open(log, "a") as handle:
        handle.write("$ catsdogs " + shlex.join(args) + "\n")
        handle.flush()
        code = subprocess.call(catsdogs_command() + args, stdout=handle, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return code, wall, cpu


def accuracy_of(folder: Path) -> tuple[float | None, float | None]:
    """(accuracy of the photo alone, accuracy with TTA) from an evaluation folder: format /2
    has the test-time views' figures at the top and the photo alone's under ``photo_alone``
    (format /1, of catsdogs before TTA became the default: the reverse, under ``tta``)."""
    metrics = json.loads((folder / "metrics.json").read_text())
    if "photo_alone" in metrics:
        return (metrics["photo_alone"] or {}).get("accuracy"), metrics.get("accuracy")
    return metrics.get("accuracy"), (metrics.get("tta") or {}).get("accuracy")


def throughput(model: Path) -> tuple[int, float | None]:
    """(epochs run, training photos per second of epoch time, the first epoch left out)."""
    info = json.loads((model / "model.json").read_text())
    photos = info.get("num_train") or info.get("dataset", {}).get("num_train")
    with open(model / "history.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    seconds = [float(row["seconds"]) for row in rows if row.get("seconds")]
    if not photos or not seconds:
        return len(rows), None
    timed = seconds[1:] or seconds  # epoch 1 also compiles the step
    return len(rows), photos * len(timed) / sum(timed)


def one_run(recipe: Recipe, seed: int, prepared: Path, other: Path | None, common: list[str],
            work: Path, log: Path) -> Run:
    run = Run(recipe.name, seed)
    model = work / f"model-{recipe.name}-s{seed}"
    flags = ["train", "--data", str(prepared), "--out", str(model), "--seed", str(seed),
             "--force", *common, *recipe.flags]
    code, run.wall_s, run.cpu_s = run_cli(flags, log)
    if code != 0:
        run.error = f"train exit {code}"
        return run
    run.epochs, run.photos_per_s = throughput(model)
    for name, data in (("held_out", prepared), ("other", other)):
        if data is None:
            continue
        out = work / f"eval-{recipe.name}-s{seed}-{name}"
        code, _, _ = run_cli(["evaluate", str(data), "--model", str(model), "--out", str(out),
                              "--force"], log)
        if code != 0:
            run.error = f"evaluate {name} exit {code}"
            return run
        plain, augmented = accuracy_of(out)
        setattr(run, name, plain)
        setattr(run, f"{name}_tta", augmented)
    return run


def prepare(source: str, out: Path, size: int | None, test_fraction: float | None, seed: int,
            log: Path) -> None:
    """``catsdogs prepare`` at ``size`` (None: prepare's default size)."""
    args = ["prepare"] + ([] if source == "sample" else [source])
    args += ["--out", str(out), "--seed", str(seed), "--quiet", "--force"]
    args += ["--size", str(size)] if size else []
    if test_fraction:
        args += ["--test-fraction", str(test_fraction)]
    code, _, _ = run_cli(args, log)
    if code != 0:
        raise SystemExit(f"prepare {source} failed (exit {code}); see {log}")


def spread(values: list[float]) -> str:
    if not values:
        return "–"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.1%}"
    return (f"{mean:.1%} ± {statistics.stdev(values):.1%} "
            f"({min(values):.1%}–{max(values):.1%})")


# Student's t, 97.5th percentile, by degrees of freedom (a 95% two-sided interval); past 10
# degrees 2.201 (that of 11) is used, which overstates the interval slightly.
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
         9: 2.262, 10: 2.228}


def paired_difference(mine: dict[int, float], baseline: dict[int, float]) -> str:
    """A recipe against the baseline on the seeds both ran (same split, same held-out photos):
    the mean difference in points with its 95% interval, and each seed's difference. Single
    runs vary by several points between seeds, much less between two recipes on one seed,
    so this is the figure that says whether a recipe gained or only met an easier split."""
    seeds = sorted(set(mine) & set(baseline))
    if not seeds:
        return "–"
    differences = [(mine[seed] - baseline[seed]) * 100 for seed in seeds]
    each = ", ".join(f"{difference:+.2f}" for difference in differences)
    mean = statistics.fmean(differences)
    if len(differences) == 1:
        return f"{mean:+.2f} (one seed)"
    half = (T_975.get(len(differences) - 1, 2.201) * statistics.stdev(differences)
            / len(differences) ** 0.5)
    return f"{mean:+.2f} ± {half:.2f} ({each})"


def paired_table(runs: list[Run], baseline: str = "default") -> str:
    """Each recipe against ``baseline``, seed by seed, in points of accuracy: the six views
    (evaluate's default) and the photo alone, held out and on the other source, and the
    ratio of wall times. Empty when the baseline did not run."""
    def by_seed(recipe: str, name: str) -> dict[int, float]:
        return {run.seed: getattr(run, name) for run in runs
                if run.recipe == recipe and not run.error and getattr(run, name) is not None}

    names = list(dict.fromkeys(run.recipe for run in runs if run.recipe != baseline))
    if not names or not any(run.recipe == baseline for run in runs):
        return ""
    lines = [
        f"Against `{baseline}` on the same seeds (points; mean ± 95% interval, then each "
        "seed):\n",
        "| recipe | held out: six views | the photo alone | other: six views | the photo alone "
        "| wall |",
        "|---|---|---|---|---|---|",
    ]
    walls = {name: by_seed(name, "wall_s") for name in [baseline, *names]}
    for name in names:
        cells = [paired_difference(by_seed(name, field_name), by_seed(baseline, field_name))
                 for field_name in ("held_out_tta", "held_out", "other_tta", "other")]
        seeds = set(walls[name]) & set(walls[baseline])
        ratios = [walls[name][seed] / walls[baseline][seed] for seed in seeds]
        ratio = f"{statistics.fmean(ratios):.2f}×" if ratios else "–"
        lines.append(f"| {name} | {' | '.join(cells)} | {ratio} |")
    return "\n".join(lines)


def table(recipes: list[Recipe], runs: list[Run], common: list[str]) -> str:
    lines = [
        "| recipe | train options | seeds | held-out, the photo alone (mean ± sd, range) "
        "| other source | drop | six views (evaluate's default): held-out, other | epochs "
        "| wall (mean) "
        "| CPU (mean) | training photos/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for recipe in recipes:
        mine = [run for run in runs if run.recipe == recipe.name and not run.error]
        failed = [f"seed {run.seed}: {run.error}" for run in runs
                  if run.recipe == recipe.name and run.error]
        options = " ".join(common + recipe.flags) or "(none)"
        if recipe.size:
            options = f"prepare --size {recipe.size}; {options}"
        if not mine:
            lines.append(f"| {recipe.name} | `{options}` | – | failed: {'; '.join(failed)} "
                         "| | | | | | | |")
            continue
        held = [run.held_out for run in mine if run.held_out is not None]
        other = [run.other for run in mine if run.other is not None]
        drop = (f"{(statistics.fmean(held) - statistics.fmean(other)) * 100:.1f} points"
                if held and other else "–")
        rates = [run.photos_per_s for run in mine if run.photos_per_s]
        rate = f"{statistics.fmean(rates):.0f}" if rates else "–"
        tta = [[getattr(run, name) for run in mine if getattr(run, name) is not None]
               for name in ("held_out_tta", "other_tta")]
        augmented = ", ".join(f"{statistics.fmean(values):.1%}" if values else "–"
                              for values in tta)
        note = f" (failed: {'; '.join(failed)})" if failed else ""
        lines.append(
            f"| {recipe.name} | `{options}` | {','.join(str(run.seed) for run in mine)}{note} "
            f"| {spread(held)} | {spread(other)} | {drop} | {augmented} "
            f"| {statistics.fmean([run.epochs for run in mine]):.0f} "
            f"| {statistics.fmean([run.wall_s for run in mine]) / 60:.1f} min "
            f"| {statistics.fmean([run.cpu_s for run in mine]) / 60:.1f} min | {rate} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="/work/shared/data/catsdogs/train",
                        help="photos to prepare, train and hold out from; 'sample': built-in")
    parser.add_argument("--other", help="photos from another source: scored, never trained on")
    parser.add_argument("--size", type=int, default=None,
                        help="prepare --size (default: prepare's); 'name@SIZE: ...' recipes "
                             "override it")
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--seeds", default="1,2,3", help="comma-separated seeds")
    parser.add_argument("--recipe", action="append", type=parse_recipe, default=[],
                        help="'name: train options' (repeatable); 'default' is always run")
    parser.add_argument("--common", default="", help="options added to every recipe's train")
    parser.add_argument("--no-baseline", action="store_true",
                        help="do not run the default recipe")
    parser.add_argument("--work", type=Path, help="working folder (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the working folder")
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    parser.add_argument("--json", type=Path, help="also write every run as JSON")
    parser.add_argument("--paired-from", type=Path, metavar="JSON",
                        help="run nothing: print the paired comparison of the runs a former "
                             "--json wrote")
    args = parser.parse_args(argv)
    if args.paired_from:
        runs = [Run(**run) for run in json.loads(args.paired_from.read_text())]
        print(paired_table(runs))
        return 0

    seeds = [int(seed) for seed in args.seeds.split(",") if seed.strip()]
    recipes = ([] if args.no_baseline else [Recipe("default", [])]) + args.recipe
    common = shlex.split(args.common)
    work = args.work or Path(tempfile.mkdtemp(prefix="accuracy_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    log = work / "commands.log"
    print(f"work folder {work}; commands and output in {log}", flush=True)
    started = time.perf_counter()
    runs: list[Run] = []
    try:
        sizes = sorted({recipe.size or args.size or 0 for recipe in recipes})
        others: dict[int, Path | None] = dict.fromkeys(sizes)
        if args.other:
            for size in sizes:
                others[size] = work / f"other-{size or 'default'}"
                prepare(args.other, others[size], size, None, 0, log)
        for seed in seeds:
            prepared: dict[int, Path] = {}
            for size in sizes:
                prepared[size] = work / f"prepared-s{seed}-{size or 'default'}"
                prepare(args.source, prepared[size], size, args.test_fraction, seed, log)
            for recipe in recipes:
                size = recipe.size or args.size or 0
                run = one_run(recipe, seed, prepared[size], others[size], common, work, log)
                runs.append(run)
                print(json.dumps(run.__dict__), flush=True)
    finally:
        load = os.getloadavg()
        header = (
            f"accuracy_bench: source {args.source}, size {args.size or 'default'}, test fraction "
            f"{args.test_fraction}, seeds {seeds}, other {args.other or '–'}; "
            f"{os.cpu_count()} CPUs, load average at the end {load[0]:.1f}/{load[1]:.1f}/"
            f"{load[2]:.1f}; {(time.perf_counter() - started) / 60:.1f} min in all\n\n"
        )
        paired = paired_table(runs)
        text = header + table(recipes, runs, common) + "\n" + (f"\n{paired}\n" if paired else "")
        print(text)
        if args.markdown:
            args.markdown.write_text(text)
        if args.json:
            args.json.write_text(json.dumps([run.__dict__ for run in runs], indent=1))
        if not args.work and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0 if runs and not any(run.error for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
