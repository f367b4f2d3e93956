"""Training on several devices with tf.distribute, as ``train.distribute`` asks.

- ``none``: TensorFlow's default strategy, one device; the same arithmetic as before this option.
- ``mirrored``: a copy of the model on every local GPU or, without GPUs, on ``train.cpu_devices``
  logical CPU devices (they share the machine's cores: useful to try the code path, not for speed).
- ``multi_worker``: one process per machine, started with the ``TF_CONFIG`` environment variable
  naming every worker and this one's place among them. Start the chief with ``dvc repro`` and
  each other worker, on its machine, with the same checkout and data (for the transfer stage also
  ``models/<transfer.init_from>``), e.g. ``TF_CONFIG='{"cluster": {"worker": ["host1:2222",
  "host2:2222"]}, "task": {"type": "worker", "index": 1}}' python stages/train.py binary``.
  Only the chief writes the stage's outputs, its progress and the MLflow run; as the other
  workers do not have that progress, a killed run starts afresh rather than resuming.

Each step splits ``train.batch_size`` (the global batch) across the replicas and sums their
gradients, so the update is that of one device on the whole batch, up to the order of the sums,
batch normalisation's statistics (per replica) and the Dice loss and metric (pooled over each
replica's share, then averaged). ``train.lr`` is used as written: the usual linear-scaling rule, when the batch grows k
times to keep each device busy, is to multiply the learning rate by k too (with a warm-up).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Mapping
from typing import Any

import tensorflow as tf

from retinaseg.core.errors import PipelineError, one_line
from retinaseg.core.params import TrainParams

TF_CONFIG = "TF_CONFIG"
TF_CONFIG_EXAMPLE = ('TF_CONFIG=\'{"cluster": {"worker": ["host1:2222", "host2:2222"]}, '
                     '"task": {"type": "worker", "index": 0}}\'')


def is_chief(mode: str, environ: Mapping[str, str] | None = None) -> bool:
    """Whether this process writes outputs, progress and MLflow: always, except a multi_worker non-chief."""
    if mode != "multi_worker":
        return True
    task_type, index, cluster = cluster_task(os.environ if environ is None else environ)
    return task_type == "chief" or (task_type == "worker" and index == 0 and "chief" not in cluster)


def cluster_task(environ: Mapping[str, str]) -> tuple[str, int, dict[str, list[str]]]:
    """(task type, task index, cluster) of ``TF_CONFIG``; a PipelineError naming the fix when it is unusable."""
    text = environ.get(TF_CONFIG, "").strip()
    if not text:
        raise PipelineError(f"train.distribute = multi_worker needs the {TF_CONFIG} environment variable on every "
                            f"worker; set it, e.g. {TF_CONFIG_EXAMPLE} (index 1 on the second machine)")
    try:
        config = json.loads(text)
    except ValueError:
        config = None
    cluster = config.get("cluster") if isinstance(config, dict) else None
    task = config.get("task") if isinstance(config, dict) else None
    if not (isinstance(cluster, dict) and cluster and set(cluster) <= {"chief", "worker"}
            and all(_addresses(hosts) for hosts in cluster.values())
            and len(cluster.get("chief", [])) <= 1 and isinstance(task, dict)):
        raise PipelineError(f"{TF_CONFIG} = {one_line(text, limit=80)} is not a cluster of chief/worker "
                            f"host:port lists and a task; write it as {TF_CONFIG_EXAMPLE}")
    task_type, index = task.get("type"), task.get("index")
    if task_type not in cluster or not isinstance(index, int) or not 0 <= index < len(cluster[task_type]):
        raise PipelineError(f"{TF_CONFIG}: task {json.dumps(task)} is not in its cluster; set task.type to one of "
                            f"{', '.join(cluster)} and task.index to this worker's place in that list, from 0")
    return task_type, index, cluster


def strategy(params: TrainParams) -> tf.distribute.Strategy:
    """The strategy of ``train.distribute``; call it before anything initialises TensorFlow's devices.

    Logical CPU devices and collective operations can only be set up before TensorFlow
    starts its runtime, which the first tensor or model does.
    """
    if params.distribute == "none":
        return tf.distribute.get_strategy()
    if params.distribute == "multi_worker":
        cluster_task(os.environ)
    try:
        return _strategy(params.distribute, params.cpu_devices)
    except RuntimeError as error:  # "... must be configured at program startup"
        raise PipelineError(f"train.distribute = {params.distribute}: TensorFlow was started before the strategy "
                            f"could set it up ({one_line(error)}); start training in a fresh process, "
                            "e.g. python stages/train.py <task>") from None


@functools.cache
def _strategy(mode: str, cpu_devices: int) -> tf.distribute.Strategy:
    """One strategy per setting and process: another over the same devices would reuse the first one's keys
    for its collective operations and mix their values up (several trainings in one process, as tests do)."""
    if mode == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if tf.config.list_physical_devices("GPU"):
        return tf.distribute.MirroredStrategy()
    return tf.distribute.MirroredStrategy(logical_cpus(cpu_devices))


def logical_cpus(count: int) -> list[str]:
    """Split the CPU into ``count`` logical devices and name them; the same split again is accepted.

    Raises a PipelineError when TensorFlow has already started with another number of CPU devices.
    """
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)
    except RuntimeError:
        started = len(tf.config.list_logical_devices("CPU"))
        if started != count:
            raise PipelineError(f"train.cpu_devices = {count}: TensorFlow already started with {started} CPU "
                                "device(s), and logical devices are fixed at start-up; train in a fresh process, "
                                "e.g. python stages/train.py <task>") from None
    return [device.name for device in tf.config.list_logical_devices("CPU")]


def replicas(distribution: tf.distribute.Strategy) -> int:
    """Copies of the model that share each global batch."""
    return distribution.num_replicas_in_sync


def enable_multi_worker_fit(model, distribution: tf.distribute.Strategy) -> None:
    """Work around two failures of Keras 3.15's fit under MultiWorkerMirroredStrategy (keras-team/keras#20585).

    Before the first step fit reduces a whole (images, targets) batch across workers to build
    the training state, which the strategy refuses: this model skips that and builds it when
    fit traces the step, as a model without a strategy does. After each step fit averages the
    replicas' logs along axis 0, which a scalar lacks: each step's logs are given that axis.
    """
    if not isinstance(distribution, tf.distribute.MultiWorkerMirroredStrategy):
        return
    model._maybe_symbolic_build = lambda *args, **kwargs: None
    model.train_step, model.test_step = _logs_with_axis(model.train_step), _logs_with_axis(model.test_step)


def _logs_with_axis(step: Callable) -> Callable:
    """``step`` returning each log as a one-element vector, for fit to average across workers."""

    def step_with_axis(data):
        return {name: tf.reshape(value, [1]) for name, value in step(data).items()}

    return step_with_axis


def replica_share(loss: Callable, distribution: tf.distribute.Strategy) -> Callable:
    """``loss`` divided by the number of replicas, whose gradients are summed: the step is then the global batch's.

    Keras divides a loss so only when it returns one value per sample; ours return one value
    per batch (the Dice pools its sums over the batch), which Keras leaves as it is, so the
    step would be as many times too large as there are replicas. On one device ``loss`` itself.
    """
    count = replicas(distribution)
    if count == 1:
        return loss

    def share(y_true, y_pred):
        return loss(y_true, y_pred) / count

    share.__name__ = loss.__name__
    return share


def check_batches(params: TrainParams, count: int, sets: dict[str, int]) -> None:
    """Refuse a batch that would leave one of ``count`` replicas without an image (batch normalisation fails).

    ``sets`` maps a description (``"training rows"``) to its size; the last batch of each holds what is left.
    """
    for what, rows in sets.items():
        smallest = min({min(rows, params.batch_size), rows % params.batch_size} - {0}, default=count)
        if smallest < count:
            raise PipelineError(f"train.batch_size = {params.batch_size} leaves a batch of {smallest} of the {rows} "
                                f"{what}, fewer than the {count} replicas of train.distribute = {params.distribute} "
                                "(each needs one); choose another train.batch_size")


def resumes(mode: str) -> bool:
    """Whether a killed run's progress can be resumed: not by multi_worker, whose other workers lack it."""
    return mode != "multi_worker"


def _addresses(hosts: Any) -> bool:
    return isinstance(hosts, list) and bool(hosts) and all(isinstance(host, str) and ":" in host for host in hosts)
