"""Where training runs: one device, several GPUs of one machine, or several machines.

:func:`plan` looks at the environment once, before any TensorFlow operation runs, and returns a
:class:`DistributionPlan` that ``catsdogs.train`` uses at six points: the model is built and
compiled inside :meth:`DistributionPlan.scope`, the per-replica ``--batch-size`` becomes a
global batch (:meth:`~DistributionPlan.global_batch_size`), each worker trains on its own equal
shard of the photos (:meth:`~DistributionPlan.shard`, :meth:`~DistributionPlan.dataset`), only
the chief writes ``--out`` (:meth:`~DistributionPlan.output_folder`), the log says how the
work was spread (:meth:`~DistributionPlan.describe`) and the workers finish together
(:meth:`~DistributionPlan.finish`).

- No ``TF_CONFIG`` and at most one GPU: no strategy at all. Nothing new is imported, the
  model and the data are exactly what they were without this module.
- Several GPUs on one machine: ``tf.distribute.MirroredStrategy`` on the TensorFlow backend,
  ``keras.distribution.DataParallel`` on the JAX backend. Each GPU takes ``--batch-size``
  photos of every step.
- ``TF_CONFIG`` naming two or more workers: ``tf.distribute.MultiWorkerMirroredStrategy``
  (TensorFlow backend only). Every worker runs the same ``catsdogs train`` command with its
  own ``TF_CONFIG``; worker 0 (or the ``chief`` task) is the chief.

How a worker's shard reaches the model under ``MultiWorkerMirroredStrategy``: Keras 3's
TensorFlow trainer turns a ``PyDataset`` into a ``tf.data.Dataset.from_generator`` and hands it
to ``strategy.experimental_distribute_dataset``, which *re-batches* every batch into
``workers × replicas`` pieces and auto-shards by element (``from_generator`` reads no files;
TensorFlow 2.21's ``input_lib``), so each worker would read every photo and train on a slice
of each batch. Instead, each worker
here builds its ``PyDataset`` over its own shard of the training indices (``indices[i::W]``
after the seeded split, padded to equal length), and :meth:`DistributionPlan.dataset` passes
it through ``strategy.distribute_datasets_from_function``, which neither re-batches nor
auto-shards: every replica gets whole per-replica batches of its own worker's shard, and the
gradients are all-reduced across workers at every step.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import math
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

SINGLE = "single"
MIRRORED = "mirrored"
MULTI_WORKER = "multi-worker"
JAX_DATA_PARALLEL = "jax-data-parallel"

STRATEGY_NAMES = {
    SINGLE: "no distribution strategy",
    MIRRORED: "MirroredStrategy",
    MULTI_WORKER: "MultiWorkerMirroredStrategy",
    JAX_DATA_PARALLEL: "keras.distribution.DataParallel",
}


@dataclass(frozen=True)
class ClusterSpec:
    """The parts of ``TF_CONFIG`` catsdogs needs: the workers and which one this is."""

    workers: tuple[str, ...]
    worker_index: int  # 0 is the chief

    @property
    def num_workers(self) -> int:
        return len(self.workers)


def read_tf_config(environ: Mapping[str, str] | None = None) -> ClusterSpec | None:
    """Parse ``TF_CONFIG``; ``None`` when it is unset or empty.

    The standard layout: ``{"cluster": {"worker": ["host1:port", "host2:port"]},
    "task": {"type": "worker", "index": 0}}``, optionally with a one-entry ``"chief"`` job
    (the chief then counts as worker 0, as in TensorFlow). Raises ValueError with one line
    for anything else.
    """
    text = (os.environ if environ is None else environ).get("TF_CONFIG", "").strip()
    if not text:
        return None
    try:
        config = json.loads(text)
    except ValueError as error:
        raise ValueError(f"TF_CONFIG is not valid JSON: {error}") from None
    if not isinstance(config, dict):
        raise ValueError("TF_CONFIG must be a JSON object with 'cluster' and 'task'")
    cluster, task = config.get("cluster"), config.get("task")
    if not isinstance(cluster, dict) or not isinstance(task, dict):
        raise ValueError("TF_CONFIG must have a 'cluster' object and a 'task' object")
    unsupported = sorted(set(cluster) - {"chief", "worker"})
    if unsupported:
        raise ValueError(
            f"TF_CONFIG cluster job(s) {', '.join(unsupported)} not supported: catsdogs trains "
            "with MultiWorkerMirroredStrategy, which takes 'chief' and 'worker' jobs only"
        )
    jobs: dict[str, list[str]] = {}
    for name in ("chief", "worker"):
        addresses = cluster.get(name, [])
        if not isinstance(addresses, list) or not all(
            isinstance(address, str) and address for address in addresses
        ):
            raise ValueError(f"TF_CONFIG cluster.{name} must be a list of 'host:port' strings")
        jobs[name] = addresses
    if len(jobs["chief"]) > 1:
        raise ValueError("TF_CONFIG cluster.chief may hold one address only")
    workers = tuple(jobs["chief"] + jobs["worker"])
    if not workers:
        raise ValueError("TF_CONFIG cluster names no worker")
    if len(set(workers)) != len(workers):
        raise ValueError("TF_CONFIG cluster names the same address twice")
    task_type, index = task.get("type"), task.get("index", 0)
    if task_type not in ("chief", "worker"):
        raise ValueError(f"TF_CONFIG task.type must be 'chief' or 'worker', got {task_type!r}")
    if not isinstance(index, int) or isinstance(index, bool) or not (
        0 <= index < len(jobs[task_type])
    ):
        raise ValueError(
            f"TF_CONFIG task.index {index!r} is not a position in cluster.{task_type} "
            f"({len(jobs[task_type])} address(es))"
        )
    worker_index = index if task_type == "chief" else len(jobs["chief"]) + index
    return ClusterSpec(workers, worker_index)


def equal_shards(indices: np.ndarray, num_shards: int) -> list[np.ndarray]:
    """Split ``indices`` into ``num_shards`` disjoint-as-possible shards of equal length.

    Shard ``i`` is ``indices[i::num_shards]`` after padding ``indices`` to a multiple of
    ``num_shards`` with its own first elements, so every index is used and at most
    ``num_shards - 1`` of them are used twice per epoch. Equal lengths give every worker the
    same number of steps, which synchronous all-reduce training requires.
    """
    indices = np.asarray(indices)
    if num_shards < 1:
        raise ValueError(f"number of shards must be at least 1, got {num_shards}")
    if len(indices) < num_shards:
        raise ValueError(
            f"{len(indices)} photos cannot be shared among {num_shards} workers: "
            "every worker needs at least one"
        )
    padded = pad_to_multiple(indices, num_shards)
    return [padded[i::num_shards] for i in range(num_shards)]


def pad_to_multiple(indices: np.ndarray, multiple: int) -> np.ndarray:
    """``indices`` followed by as many of its first elements (cycling) as make the length a
    multiple of ``multiple``."""
    indices = np.asarray(indices)
    missing = (-len(indices)) % multiple
    if missing == 0 or len(indices) == 0:
        return indices
    return np.concatenate([indices, np.resize(indices, missing)])


@dataclass
class DistributionPlan:
    """How one ``catsdogs train`` process takes part in training."""

    kind: str = SINGLE
    num_workers: int = 1
    worker_index: int = 0
    replicas: int = 1  # replicas in sync, over all workers
    strategy: Any = None  # tf.distribute.Strategy or keras.distribution.DataParallel
    _scratch: Path | None = field(default=None, repr=False)

    @property
    def is_chief(self) -> bool:
        return self.worker_index == 0

    @property
    def active(self) -> bool:
        return self.kind != SINGLE

    @property
    def replicas_per_worker(self) -> int:
        return self.replicas // self.num_workers

    def scope(self) -> contextlib.AbstractContextManager:
        """Build, compile and fit the model inside this: variables are then mirrored.

        With several workers, losing contact with the others (one of them stopped, or the
        network failed) becomes a one-line ValueError instead of TensorFlow's traceback.
        """
        if self.strategy is None:
            return contextlib.nullcontext()
        if self.kind == MULTI_WORKER:
            return self._multi_worker_scope()
        return self.strategy.scope()

    @contextlib.contextmanager
    def _multi_worker_scope(self) -> Iterator[None]:
        with lost_workers_as_value_error(), self.strategy.scope():
            yield

    def global_batch_size(self, per_replica: int) -> int:
        """Photos per optimizer step over all replicas: ``--batch-size`` × replicas."""
        return per_replica * self.replicas

    def shard(self, indices: np.ndarray, per_replica_batch: int) -> np.ndarray:
        """This worker's share of ``indices`` (all of them on one machine).

        Several workers: an equal-length shard (see :func:`equal_shards`). JAX data parallel:
        all indices, padded to whole global batches, since a batch must split evenly over the
        devices.
        """
        if self.kind == MULTI_WORKER:
            return equal_shards(indices, self.num_workers)[self.worker_index]
        if self.kind == JAX_DATA_PARALLEL:
            return pad_to_multiple(indices, self.global_batch_size(per_replica_batch))
        return np.asarray(indices)

    def steps_per_epoch(self, indices: np.ndarray, per_replica_batch: int) -> int:
        """Training steps per epoch over this worker's shard of ``indices``."""
        batch = (per_replica_batch if self.kind == MULTI_WORKER
                 else self.global_batch_size(per_replica_batch))
        return math.ceil(len(self.shard(indices, per_replica_batch)) / batch)

    def dataset(
        self,
        make_batches: Callable[[np.ndarray, int], Any],
        indices: np.ndarray,
        per_replica_batch: int,
    ) -> Any:
        """What to pass to ``model.fit`` for the photos at ``indices``.

        ``make_batches(indices, batch_size)`` builds a ``keras.utils.PyDataset``. It gets this
        worker's shard and the batch size the strategy expects: the global batch on one
        machine (Keras splits it over the replicas), the per-replica batch under
        ``MultiWorkerMirroredStrategy`` (wrapped with ``distribute_datasets_from_function``).
        """
        shard = self.shard(indices, per_replica_batch)
        if self.kind != MULTI_WORKER:
            return make_batches(shard, self.global_batch_size(per_replica_batch))
        return distribute_per_worker(self, make_batches(shard, per_replica_batch))

    def output_folder(self, out: Path) -> Path:
        """Where this process saves the model: ``out`` for the chief; for another worker, a
        scratch folder it removes. Every worker runs the same program, saving included, as
        TensorFlow asks of this strategy (reading some variables may all-reduce them); only
        the chief's copy is kept."""
        if self.is_chief:
            return out
        if self._scratch is None:
            self._scratch = Path(tempfile.mkdtemp(prefix=f"catsdogs-worker{self.worker_index}-"))
            atexit.register(self.close)
        return self._scratch / "model"

    def finish(self) -> None:
        """End of training: several workers wait for each other here (one all-reduce), so
        none leaves while another is still saving, then a non-chief removes its scratch
        folder."""
        if self.kind == MULTI_WORKER:
            wait_for_all_workers(self)
        self.close()

    def close(self) -> None:
        """Remove a non-chief worker's scratch folder (also done at exit)."""
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

    def describe(self, per_replica_batch: int) -> str:
        """One line for the training log; empty when training is not distributed."""
        if not self.active:
            return ""
        name = STRATEGY_NAMES[self.kind]
        total = self.global_batch_size(per_replica_batch)
        batch = (
            f"global batch {total} = {per_replica_batch} per replica x {self.replicas} replicas"
        )
        if self.kind == MULTI_WORKER:
            role = "chief" if self.is_chief else "not the chief"
            return (
                f"{self.num_workers} workers ({name}, {self.replicas_per_worker} replica(s) "
                f"per worker; this is worker {self.worker_index}, {role}), {batch}"
            )
        return f"{self.replicas} devices ({name}), {batch}"

    def to_dict(self, per_replica_batch: int) -> dict[str, Any]:
        """For ``model.json``."""
        return {
            "strategy": STRATEGY_NAMES[self.kind],
            "workers": self.num_workers,
            "replicas": self.replicas,
            "per_replica_batch_size": per_replica_batch,
            "global_batch_size": self.global_batch_size(per_replica_batch),
        }


def distribute_per_worker(plan: DistributionPlan, batches: Any) -> Any:
    """``batches`` (this worker's ``PyDataset``) as a distributed dataset that gives every
    local replica whole per-replica batches, neither re-batched nor auto-sharded."""
    import tensorflow as tf

    first = batches[0]
    first = first if isinstance(first, tuple) else (first,)
    signature = tuple(
        tf.TensorSpec((None, *np.shape(part)[1:]), tf.as_dtype(np.asarray(part).dtype))
        for part in first
    )
    passes = 0

    def generate() -> Iterator[tuple]:
        # Called once per pass over the data (and once for Keras' first-batch peek). The
        # reshuffle of the previous pass happens here, not after its last batch: a
        # prefetching thread may still be finishing the old pass when the new one starts.
        nonlocal passes
        if passes:
            batches.on_epoch_end()
        passes += 1
        batches.on_epoch_begin()
        for position in range(len(batches)):
            batch = batches[position]
            yield batch if isinstance(batch, tuple) else (batch,)

    def dataset_fn(context: Any) -> Any:
        if (context.num_input_pipelines, context.input_pipeline_id) != (
            plan.num_workers,
            plan.worker_index,
        ):
            raise ValueError(
                f"TensorFlow placed this worker's input as pipeline "
                f"{context.input_pipeline_id} of {context.num_input_pipelines}, expected "
                f"{plan.worker_index} of {plan.num_workers}"
            )
        return tf.data.Dataset.from_generator(generate, output_signature=signature).prefetch(2)

    return plan.strategy.distribute_datasets_from_function(dataset_fn)


def wait_for_all_workers(plan: DistributionPlan) -> None:
    """One all-reduce that every worker must reach: none leaves while another is still
    saving. A ValueError when some replicas are missing."""
    import tensorflow as tf

    @tf.function
    def count_replicas() -> Any:
        ones = plan.strategy.run(lambda: tf.constant(1, tf.int32))
        return plan.strategy.reduce(tf.distribute.ReduceOp.SUM, ones, axis=None)

    with lost_workers_as_value_error():
        present = int(count_replicas())
    if present != plan.replicas:
        raise ValueError(f"only {present} of {plan.replicas} replicas reached the end")


@contextlib.contextmanager
def lost_workers_as_value_error() -> Iterator[None]:
    """TensorFlow's errors for a cluster that fell apart, as one line."""
    import tensorflow as tf

    lost = (tf.errors.UnavailableError, tf.errors.CancelledError, tf.errors.AbortedError,
            tf.errors.DeadlineExceededError)
    try:
        yield
    except lost as error:
        lines = [line.strip() for line in str(error.message).splitlines() if line.strip()]
        reason = lines[0].rsplit("}}", 1)[-1].strip() if lines else type(error).__name__
        raise ValueError(
            f"lost contact with the other workers ({reason}); the log of a worker that "
            "stopped says why. Start all workers again"
        ) from None


def local_accelerators(backend: str) -> list[str]:
    """Names of this machine's GPUs, as the backend's distribution API takes them."""
    if backend == "tensorflow":
        import tensorflow as tf

        return [f"/gpu:{i}" for i, _ in enumerate(tf.config.list_physical_devices("GPU"))]
    if backend == "jax":
        import jax

        return [f"{d.platform}:{d.id}" for d in jax.devices() if d.platform != "cpu"]
    return []


def plan(environ: Mapping[str, str] | None = None) -> DistributionPlan:
    """Choose how to train, from ``TF_CONFIG`` and the visible GPUs.

    Call it before any TensorFlow operation runs: ``MultiWorkerMirroredStrategy`` must set up
    its collective operations before the TensorFlow runtime starts. The default path (no
    ``TF_CONFIG``, at most one GPU) imports nothing and returns a plan with no strategy.
    """
    from catsdogs.backend import keras as import_keras

    cluster = read_tf_config(environ)
    backend = import_keras().backend.backend()
    if cluster is not None and cluster.num_workers > 1:
        if backend != "tensorflow":
            raise ValueError(
                f"TF_CONFIG asks for {cluster.num_workers} workers, but multi-worker training "
                f"needs KERAS_BACKEND=tensorflow (this is {backend}); unset TF_CONFIG to "
                "train on this machine alone"
            )
        return multi_worker_plan(cluster)
    devices = local_accelerators(backend)
    if len(devices) < 2:
        return DistributionPlan()
    return single_machine_plan(backend, devices)


def multi_worker_plan(cluster: ClusterSpec) -> DistributionPlan:
    import tensorflow as tf

    from catsdogs.backend import quiet_native_stderr

    patch_keras_for_multi_worker()  # first: a Keras it cannot patch is refused at once
    try:
        with quiet_native_stderr():
            strategy = tf.distribute.MultiWorkerMirroredStrategy()
    except RuntimeError as error:
        raise ValueError(f"cannot start multi-worker training: {error}") from None
    # Keras warns that fit's shuffle=True is ignored for a tf.data input: our PyDataset shuffles.
    warnings.filterwarnings("ignore", message=r"`shuffle=True` was passed")
    # The per-worker dataset's length is learnt in the first epoch (tf.data cannot know how
    # many steps the local replicas take from it); Keras warns when that epoch ends.
    warnings.filterwarnings("ignore", message=r"Your input ran out of data")
    return DistributionPlan(
        kind=MULTI_WORKER,
        num_workers=cluster.num_workers,
        worker_index=cluster.worker_index,
        replicas=int(strategy.num_replicas_in_sync),
        strategy=strategy,
    )


def patch_keras_for_multi_worker() -> None:
    """Work around two faults of Keras 3's TensorFlow trainer under
    ``MultiWorkerMirroredStrategy`` (keras-team/keras#20585, still open in Keras 3.15), so that
    ``model.fit`` runs. Applied only in a multi-worker process, before training starts; a
    Keras that has moved the private functions it replaces is refused in one line
    (:func:`keras_private_functions`), since without them training fails later in a
    traceback.

    1. Before the first step, ``_maybe_symbolic_build`` takes the first distributed batch and
       calls ``strategy.reduce("MEAN", (x, y))`` on the whole tuple, only to learn the input
       shapes; the strategy cannot reduce a tuple ("Attempt to convert a value
       (PerReplica..."). Here it gets this worker's first local batch instead, which has the
       shapes and dtypes the build needs and costs no network round trip.
    2. After every step, ``reduce_per_replica`` averages each replica's metrics with
       ``strategy.reduce("MEAN", value, axis=0)``, which fails for scalars ("Invalid
       reduction dimension 0 for input with 0 dimensions"). Here scalars are averaged over
       all replicas of all workers with ``axis=None``; every worker then logs the same
       numbers.
    """
    import tensorflow as tf

    tf_trainer, trainer_class, build, reduce = keras_private_functions()
    if getattr(reduce, "catsdogs_patched", False):
        return

    def first_local(value: Any, strategy: Any) -> Any:
        if isinstance(value, tf.distribute.DistributedValues):
            return strategy.experimental_local_results(value)[0]
        return value

    def maybe_symbolic_build(self: Any, iterator: Any = None, data_batch: Any = None) -> Any:
        strategy = getattr(self, "_distribute_strategy", None)
        if strategy is None or iterator is None or data_batch is not None:
            return build(self, iterator=iterator, data_batch=data_batch)
        for _, _, batches in iterator:
            first = next(batches)
            data_batch = tf.nest.map_structure(lambda v: first_local(v, strategy), first)
            break
        return build(self, data_batch=data_batch)

    def reduce_per_replica(values: Any, strategy: Any, reduction: str) -> Any:
        multi_worker = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
        if not multi_worker or reduction not in ("auto", "mean"):
            return reduce(values, strategy, reduction)

        def mean(value: Any) -> Any:
            if not isinstance(value, tf.distribute.DistributedValues):
                return value
            if first_local(value, strategy).shape.rank == 0:
                return strategy.reduce("MEAN", value, axis=None)
            return reduce(value, strategy, reduction)

        return tf.nest.map_structure(mean, values)

    reduce_per_replica.catsdogs_patched = True  # type: ignore[attr-defined]
    trainer_class._maybe_symbolic_build = maybe_symbolic_build
    tf_trainer.reduce_per_replica = reduce_per_replica


def keras_private_functions() -> tuple[Any, Any, Any, Any]:
    """(Keras' TensorFlow trainer module, its ``TensorFlowTrainer`` class,
    ``TensorFlowTrainer._maybe_symbolic_build``, ``reduce_per_replica``): what
    :func:`patch_keras_for_multi_worker` replaces; a one-line ValueError when this Keras does
    not have them where they were."""
    import keras

    try:
        from keras.src.backend.tensorflow import trainer as tf_trainer
    except ImportError:
        tf_trainer = None
    trainer_class = getattr(tf_trainer, "TensorFlowTrainer", None)
    build = getattr(trainer_class, "_maybe_symbolic_build", None)
    reduce = getattr(tf_trainer, "reduce_per_replica", None)
    if build is None or reduce is None:
        raise ValueError(
            f"multi-worker training needs a fix to Keras' TensorFlow trainer that this Keras "
            f"({keras.__version__}) no longer allows (keras.src.backend.tensorflow.trainer "
            "has moved); use the Keras version catsdogs was tested with, or train on one "
            "machine"
        )
    return tf_trainer, trainer_class, build, reduce


def single_machine_plan(backend: str, devices: list[str]) -> DistributionPlan:
    """Data parallel over ``devices`` (two or more) of this machine."""
    if backend == "tensorflow":
        import tensorflow as tf

        strategy = tf.distribute.MirroredStrategy(devices=devices)
        return DistributionPlan(
            kind=MIRRORED,
            replicas=int(strategy.num_replicas_in_sync),
            strategy=strategy,
        )
    if backend == "jax":
        from catsdogs.backend import keras as import_keras

        keras = import_keras()
        strategy = keras.distribution.DataParallel(devices=devices)
        return DistributionPlan(
            kind=JAX_DATA_PARALLEL,
            replicas=len(devices),
            strategy=strategy,
        )
    return DistributionPlan()
