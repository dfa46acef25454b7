"""Distributed training: TF_CONFIG parsing, equal shards, the default path, and real
runs — two MultiWorkerMirroredStrategy workers on 127.0.0.1, MirroredStrategy over two logical
CPU devices, and keras.distribution.DataParallel over two JAX host devices (stand-ins for GPUs).

Every subprocess is bounded in time and killed on timeout, so a hung collective cannot hang CI.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from catsdogs import distribute
from catsdogs.cli import cli
from tests.helpers import TINY_MODEL, assert_clean_exit

WORKER_TIMEOUT = 120  # seconds for the whole two-worker run
RUN_TIMEOUT = 120
TRAIN_ARGS = ["--epochs", "1", "--batch-size", "4", "--learning-rate", "0.01"]


def tf_config(ports: list[int], index: int) -> str:
    workers = [f"127.0.0.1:{port}" for port in ports]
    return json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})


def free_ports(count: int) -> list[int]:
    """Ports the kernel says are free on the loopback interface."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def subprocess_env(**extra: str) -> dict[str, str]:
    """This environment without proxies (gRPC honours them, even for 127.0.0.1)."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key.lower() not in {"http_proxy", "https_proxy", "all_proxy", "grpc_proxy", "tf_config"}
    }
    env["no_proxy"] = env["NO_PROXY"] = "127.0.0.1,localhost"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.update(extra)
    return env


def epoch_lines(text: str) -> list[str]:
    """The epoch lines without their timing column."""
    return [line.rsplit("  ", 2)[0] for line in text.splitlines() if line.startswith("epoch ")]


# --- TF_CONFIG -------------------------------------------------------------------------------


def test_no_tf_config_means_no_cluster():
    assert distribute.read_tf_config({}) is None
    assert distribute.read_tf_config({"TF_CONFIG": "  "}) is None


def test_tf_config_workers_and_chief():
    spec = distribute.read_tf_config({"TF_CONFIG": tf_config([1111, 2222, 3333], 2)})
    assert spec.workers == ("127.0.0.1:1111", "127.0.0.1:2222", "127.0.0.1:3333")
    assert spec.worker_index == 2 and spec.num_workers == 3
    with_chief = json.dumps({
        "cluster": {"chief": ["a:1"], "worker": ["b:1", "c:1"]},
        "task": {"type": "worker", "index": 0},
    })
    spec = distribute.read_tf_config({"TF_CONFIG": with_chief})
    assert spec.num_workers == 3 and spec.worker_index == 1  # the chief is worker 0
    chief = with_chief.replace('"type": "worker"', '"type": "chief"')
    assert distribute.read_tf_config({"TF_CONFIG": chief}).worker_index == 0


@pytest.mark.parametrize("text, message", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "JSON object"),
    ('{"cluster": {"worker": ["a:1"]}}', "'task' object"),
    ('{"cluster": {"worker": ["a:1"], "ps": ["b:1"]}, "task": {"type": "worker", "index": 0}}',
     "ps not supported"),
    ('{"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 2}}',
     "task.index 2"),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "evaluator", "index": 0}}',
     "'chief' or 'worker'"),
    ('{"cluster": {"worker": ["a:1", "a:1"]}, "task": {"type": "worker", "index": 0}}',
     "same address twice"),
    ('{"cluster": {"worker": "a:1"}, "task": {"type": "worker", "index": 0}}',
     "list of 'host:port'"),
])
def test_bad_tf_config_is_one_clear_error(text, message):
    with pytest.raises(ValueError, match=message):
        distribute.read_tf_config({"TF_CONFIG": text})


def test_bad_tf_config_fails_train_with_one_line(runner, prepared, tmp_path, monkeypatch):
    monkeypatch.setenv("TF_CONFIG", "{not json")
    result = runner.invoke(cli, ["train", "--data", str(prepared), "--out", str(tmp_path / "m"),
                                 *TINY_MODEL, *TRAIN_ARGS])
    assert_clean_exit(result, 1, "Error: TF_CONFIG is not valid JSON: Expecting property name "
                                 "enclosed in double quotes: line 1 column 2 (char 1)")
    assert not (tmp_path / "m").exists()


# --- shards ----------------------------------------------------------------------------------


@pytest.mark.parametrize("count, workers", [(20, 2), (21, 2), (10, 3), (7, 4), (5, 5)])
def test_equal_shards_cover_everything_with_equal_lengths(count, workers):
    indices = np.arange(100, 100 + count)
    shards = distribute.equal_shards(indices, workers)
    assert len(shards) == workers
    assert len({len(shard) for shard in shards}) == 1  # same number of steps on every worker
    used = np.concatenate(shards)
    assert set(used) == set(indices)  # every photo is used
    assert len(used) - count == (-count) % workers < workers  # padding: fewer than W repeats
    assert all(len(set(shard)) == len(shard) for shard in shards)  # no photo twice in a shard


def test_equal_shards_needs_a_photo_per_worker():
    with pytest.raises(ValueError, match="3 photos cannot be shared among 4 workers"):
        distribute.equal_shards(np.arange(3), 4)


# --- the default path ------------------------------------------------------------------------


def test_default_plan_has_no_strategy_and_changes_nothing(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    plan = distribute.plan()  # this machine has no GPU
    assert plan.kind == distribute.SINGLE and plan.strategy is None and not plan.active
    assert plan.is_chief and plan.describe(32) == "" and plan.global_batch_size(32) == 32
    indices = np.array([3, 1, 4, 1, 5])
    made = plan.dataset(lambda index, batch_size: (index, batch_size), indices, 32)
    assert made[1] == 32 and np.array_equal(made[0], indices)
    out = Path("some/model")
    assert plan.output_folder(out) == out


def test_single_worker_tf_config_is_not_distributed(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", tf_config([1111], 0))
    assert distribute.plan().kind == distribute.SINGLE


def test_plan_sizes_and_descriptions():
    plan = distribute.DistributionPlan(kind=distribute.MULTI_WORKER, num_workers=2,
                                       worker_index=1, replicas=4)
    assert plan.global_batch_size(16) == 64 and plan.replicas_per_worker == 2
    assert not plan.is_chief
    assert plan.describe(16) == (
        "2 workers (MultiWorkerMirroredStrategy, 2 replica(s) per worker; this is worker 1, "
        "not the chief), global batch 64 = 16 per replica x 4 replicas"
    )
    scratch = plan.output_folder(Path("model"))
    assert scratch.parent.is_dir() and scratch.parent.name.startswith("catsdogs-worker1-")
    plan.close()
    assert not scratch.parent.exists()
    jax_plan = distribute.DistributionPlan(kind=distribute.JAX_DATA_PARALLEL, replicas=2)
    assert len(jax_plan.shard(np.arange(10), 4)) == 16  # whole global batches of 8


def test_multi_worker_dataset_feeds_each_worker_only_its_shard():
    """Worker 1 of 2, as TensorFlow's distribute_datasets_from_function would call it: whole
    per-replica batches of its own shard, reshuffled every pass, no other photo."""
    import tensorflow as tf

    from catsdogs.data import ImageBatches

    class OneWorkerOfTwo:  # what the strategy does with the dataset function, minus the network
        def distribute_datasets_from_function(self, dataset_fn):
            return dataset_fn(tf.distribute.InputContext(2, 1, 2))

    plan = distribute.DistributionPlan(kind=distribute.MULTI_WORKER, num_workers=2,
                                       worker_index=1, replicas=2, strategy=OneWorkerOfTwo())
    ids = np.arange(21)
    images = np.broadcast_to(ids[:, None, None, None], (21, 2, 2, 3)).astype("uint8")
    labels = ids % 2
    train = np.arange(21)
    dataset = plan.dataset(
        lambda index, batch_size: ImageBatches(images, labels, index, batch_size, shuffle=True,
                                               seed=5),
        train, 4,
    )
    expected = distribute.equal_shards(train, 2)[1]  # 11 photos: 1, 3, ..., 19 and 0 (padding)
    passes = []
    for _ in range(2):
        batches = [(x.numpy(), y.numpy()) for x, y in dataset]
        assert [len(x) for x, _ in batches] == [4, 4, 3]  # per-replica batches, not global ones
        seen = np.concatenate([x[:, 0, 0, 0] for x, _ in batches]).astype(int)
        assert sorted(seen) == sorted(expected)
        labels_seen = np.concatenate([y.ravel() for _, y in batches])
        assert np.array_equal(labels_seen, seen % 2)
        passes.append(seen)
    assert not np.array_equal(passes[0], passes[1])  # reshuffled between epochs


# --- real runs -------------------------------------------------------------------------------


def run_workers(prepared: Path, outs: list[Path], temps: list[Path], tmp_path: Path,
                extra: list[str] = ()) -> tuple[list[int], list[str]]:
    """Start one `catsdogs train` per --out, each with its TF_CONFIG on 127.0.0.1 and its own
    TMPDIR; wait for all of them, at most WORKER_TIMEOUT seconds, killing them all after that."""
    ports = free_ports(len(outs))
    processes, logs = [], []
    try:
        for index, out in enumerate(outs):
            temps[index].mkdir()
            log = open(tmp_path / f"worker{index}.log", "w+")  # noqa: SIM115 - closed below
            logs.append(log)
            env = subprocess_env(TF_CONFIG=tf_config(ports, index), TMPDIR=str(temps[index]))
            command = [sys.executable, "-m", "catsdogs", "train", "--data", str(prepared),
                       "--out", str(out), *TINY_MODEL, *TRAIN_ARGS, *extra]
            processes.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                              env=env))
        deadline = time.monotonic() + WORKER_TIMEOUT
        for process in processes:
            process.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pytest.fail(f"{len(outs)} workers did not finish in {WORKER_TIMEOUT} s")
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        texts = []
        for log in logs:
            log.seek(0)
            texts.append(log.read())
            log.close()
    return [process.returncode for process in processes], texts


@pytest.mark.slow
def test_two_workers_on_loopback(prepared, tmp_path, runner, unseen_photos):
    """Two `catsdogs train` processes run the same command (same --out, as on shared storage),
    each with its own TF_CONFIG, and train one model together."""
    models = tmp_path / "models"
    models.mkdir()
    out = models / "model"
    temps = [tmp_path / "tmp0", tmp_path / "tmp1"]
    codes, texts = run_workers(prepared, [out, out], temps, tmp_path)
    chief, worker = texts
    assert codes == [0, 0], f"chief:\n{chief}\nworker:\n{worker}"

    assert "2 workers (MultiWorkerMirroredStrategy" in chief and "worker 0, chief" in chief
    assert "global batch 8 = 4 per replica x 2 replicas" in chief
    assert f"Saved model to {out}" in chief
    assert "Worker 1 of 2 done" in worker and "Saved model" not in worker
    # One model, trained together: both workers log the same all-reduced metrics.
    assert epoch_lines(chief) == epoch_lines(worker) and len(epoch_lines(chief)) == 1

    info = json.loads((out / "model.json").read_text())
    assert info["distribution"]["workers"] == 2 and info["distribution"]["global_batch_size"] == 8
    assert info["num_train"] == 22  # all training photos, shared by the two workers
    # Only the chief wrote: the model folder and nothing beside it (no lock file, no hidden
    # half-written copy); the other worker's scratch folder is gone.
    assert sorted(p.name for p in models.iterdir()) == ["model"]
    assert sorted(p.name for p in out.iterdir()) == ["curves.png", "history.csv", "model.json",
                                                   "model.keras", "model.onnx"]
    assert list(temps[1].iterdir()) == []

    photos = [str(p) for p in unseen_photos["cats"] + unseen_photos["dogs"]]
    result = runner.invoke(cli, ["predict", *photos, "--model", str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.output)) == 8


@pytest.mark.slow
def test_a_failing_worker_stops_the_others_with_one_line(prepared, tmp_path):
    """The chief refuses an --out that is not ours; the other worker must not hang."""
    outs = [tmp_path / "not_a_model", tmp_path / "worker1_model"]
    outs[0].mkdir()
    (outs[0] / "notes.txt").write_text("mine")
    codes, (chief, worker) = run_workers(prepared, outs, [tmp_path / "t0", tmp_path / "t1"],
                                         tmp_path)
    assert codes == [1, 1], f"chief:\n{chief}\nworker:\n{worker}"
    assert "is not empty and is not a catsdogs model" in chief
    assert "Error: lost contact with the other workers" in worker
    assert "Traceback" not in chief + worker
    assert (outs[0] / "notes.txt").read_text() == "mine" and not outs[1].exists()


MIRRORED_SCRIPT = """
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    from catsdogs import distribute
    from catsdogs.cli import cli

    distribute.local_accelerators = lambda backend: ["/cpu:0", "/cpu:1"]  # stand-ins for GPUs
    cli(prog_name="catsdogs")
"""

JAX_SCRIPT = """
    import os

    os.environ["KERAS_BACKEND"] = "jax"
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"

    from catsdogs import distribute
    from catsdogs.cli import cli

    distribute.local_accelerators = lambda backend: ["cpu:0", "cpu:1"]  # stand-ins for GPUs
    cli(prog_name="catsdogs")
"""


def run_script(script: str, args: list[str], tmp_path: Path, **env: str):
    path = tmp_path / "run_train.py"
    path.write_text(textwrap.dedent(script))
    return subprocess.run([sys.executable, str(path), *args], capture_output=True, text=True,
                          timeout=RUN_TIMEOUT, env=subprocess_env(**env))


@pytest.mark.slow
def test_mirrored_strategy_over_two_devices(prepared, tmp_path, runner, unseen_photos):
    out = tmp_path / "model"
    result = run_script(MIRRORED_SCRIPT, ["train", "--data", str(prepared), "--out", str(out),
                                          *TINY_MODEL, *TRAIN_ARGS], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert ("2 devices (MirroredStrategy), global batch 8 = 4 per replica x 2 replicas"
            in result.stdout)
    assert json.loads((out / "model.json").read_text())["distribution"]["replicas"] == 2
    cat = str(unseen_photos["cats"][0])
    assert runner.invoke(cli, ["predict", cat, "--model", str(out)]).exit_code == 0


@pytest.mark.slow
def test_jax_data_parallel_over_two_devices(prepared, tmp_path, runner, unseen_photos):
    pytest.importorskip("jax")
    out = tmp_path / "model"
    # 22 training photos in global batches of 6: the last batch is padded to split evenly.
    args = ["train", "--data", str(prepared), "--out", str(out), *TINY_MODEL,
            "--epochs", "1", "--batch-size", "3"]
    result = run_script(JAX_SCRIPT, args, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert ("2 devices (keras.distribution.DataParallel), global batch 6 = 3 per replica x 2 "
            "replicas" in result.stdout)
    info = json.loads((out / "model.json").read_text())
    assert info["backend"] == "jax" and info["distribution"]["replicas"] == 2


def test_jax_default_path_imports_no_tensorflow():
    pytest.importorskip("jax")
    code = ("import sys; from catsdogs import distribute; plan = distribute.plan(); "
            "print(plan.kind, 'tensorflow' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=RUN_TIMEOUT, env=subprocess_env(KERAS_BACKEND="jax"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["single", "False"]


@pytest.mark.slow
def test_multi_worker_needs_the_tensorflow_backend(prepared, tmp_path):
    pytest.importorskip("jax")
    command = [sys.executable, "-m", "catsdogs", "train", "--data", str(prepared),
               "--out", str(tmp_path / "m"), *TINY_MODEL, *TRAIN_ARGS]
    result = subprocess.run(command, capture_output=True, text=True, timeout=RUN_TIMEOUT,
                            env=subprocess_env(KERAS_BACKEND="jax",
                                               TF_CONFIG=tf_config(free_ports(2), 0)))
    assert result.returncode == 1
    assert "needs KERAS_BACKEND=tensorflow" in result.stderr and "Traceback" not in result.stderr
