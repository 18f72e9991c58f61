"""Data-parallel fine-tuning with ``keras.distribution.DataParallel`` (JAX backend only).

One process drives every local device; several machines (or several processes on one machine)
join when ``keras.distribution.initialize()``'s environment is set on each of them:

- ``KERAS_DISTRIBUTION_JOB_ADDRESSES``: ``host:port`` of process 0 (the coordinator), or the
  comma-separated addresses of every process;
- ``KERAS_DISTRIBUTION_NUM_PROCESSES``: how many processes take part;
- ``KERAS_DISTRIBUTION_PROCESS_ID``: this process's number, 0 .. N-1.

:func:`initialize_from_environment` calls ``initialize()`` only when they are present (under
Slurm or on a Cloud TPU JAX finds its peers itself; set them anyway to opt in).

How the data reaches the devices: the training loop calls ``train_on_batch`` with the batch of
*this process* only. Keras's JAX trainer turns it into one global array with
``jax.make_array_from_process_local_data`` (``distribute_data_input``), which splits it over the
local devices and concatenates the processes' batches in process order. ``fit`` is not used:
on several processes its data adapters accept only a ``tf.data.Dataset`` (numpy arrays raise),
and the JAX path must run without TensorFlow. Each process therefore augments only its own
slice of every global batch (:func:`process_shard`); the slices together are exactly the batch
one device would train on, so the result equals single-device training up to float error.
"""

from __future__ import annotations

import contextlib
import os

import numpy as np

DISTRIBUTION_ENV = (
    "KERAS_DISTRIBUTION_JOB_ADDRESSES",
    "KERAS_DISTRIBUTION_NUM_PROCESSES",
    "KERAS_DISTRIBUTION_PROCESS_ID",
)
"""The environment of ``keras.distribution.initialize()``; all three start a multi-process run."""

_initialized = False


class DevicesError(ValueError):
    """Data-parallel training cannot run as asked; the message says what to do."""


def initialize_from_environment() -> bool:
    """Call ``keras.distribution.initialize()`` once when :data:`DISTRIBUTION_ENV` is set (it
    must run before any JAX computation). Returns whether this is a multi-process run."""
    global _initialized
    present = [name for name in DISTRIBUTION_ENV if os.environ.get(name)]
    if not present:
        return False
    if len(present) < len(DISTRIBUTION_ENV):
        missing = ", ".join(name for name in DISTRIBUTION_ENV if name not in present)
        raise DevicesError(
            f"multi-process training needs {', '.join(DISTRIBUTION_ENV)}; {missing} not set"
        )
    if not _initialized:
        import keras

        try:
            keras.distribution.initialize()
        except RuntimeError as error:  # JAX had already started
            raise DevicesError(
                "multi-process training must join its peers before JAX runs "
                "anything: call napari_deeplab.distributed.data_parallel(devices) "
                "before making the model (the command line does)"
            ) from error
        _initialized = True
    return True


def data_parallel(devices):
    """A ``keras.distribution.DataParallel`` over ``devices``, or None when ``devices`` is None.

    ``devices``: ``"all"`` (every device of every process) or a number N (the first N local
    devices of each process; ``"N"`` as the command line gives it). Raises
    :class:`DevicesError` (one line) on the TensorFlow backend, for N below 1 or above the
    local device count, or for anything else.
    """
    if devices is None:
        return None
    import keras

    if keras.backend.backend() != "jax":
        raise DevicesError(
            f"--devices needs the JAX backend (Keras runs on "
            f"{keras.backend.backend()}): set KERAS_BACKEND=jax"
        )
    count = _device_count(devices)
    initialize_from_environment()
    import jax

    local = jax.local_devices()
    if count is None:
        chosen = jax.devices()
    elif count > len(local):
        raise DevicesError(
            f"--devices {count}: this machine has {len(local)} "
            f"{local[0].platform.upper()} device{'s' if len(local) > 1 else ''}"
        )
    else:
        chosen = _first_local_devices_of_each_process(count)
    return keras.distribution.DataParallel(devices=chosen, auto_shard_dataset=False)


def _device_count(devices) -> int | None:
    if isinstance(devices, str) and devices.strip().lower() == "all":
        return None
    try:
        count = int(devices)
    except (TypeError, ValueError):
        raise DevicesError(f"--devices {devices}: give 'all' or a number of devices") from None
    if count < 1:
        raise DevicesError(f"--devices {devices}: give 'all' or a number of devices of at least 1")
    return count


def _first_local_devices_of_each_process(count: int) -> list:
    """The first ``count`` devices of every process (each process sees only its own list, but
    JAX numbers the devices of process p after those of processes 0..p-1, in the same way)."""
    import jax

    by_process: dict[int, list] = {}
    for device in jax.devices():
        by_process.setdefault(device.process_index, []).append(device)
    return [device for devices in by_process.values() for device in devices[:count]]


def device_count(distribution) -> int:
    """How many devices ``distribution`` trains on (1 without one)."""
    return 1 if distribution is None else int(np.size(distribution.device_mesh.devices))


def process_shard(distribution) -> tuple[int, int]:
    """(this process's number, the number of processes) of a run; (0, 1) on one process."""
    if distribution is None:
        return 0, 1
    import jax

    return jax.process_index(), jax.process_count()


def fitting_batch_size(distribution, batch_size: int, samples: int) -> int:
    """The global batch to train with: ``batch_size``, or fewer when there are fewer
    ``samples`` (a multiple of the device count still). Raises :class:`DevicesError` when
    ``batch_size`` does not split evenly over the devices of ``distribution``, or when there
    are fewer samples than devices."""
    count = device_count(distribution)
    if batch_size % count:
        raise DevicesError(
            f"--batch-size {batch_size} is not a multiple of the {count} devices; "
            f"choose a multiple of {count}"
        )
    if samples < count:
        raise DevicesError(
            f"{samples} training sample{'s' if samples > 1 else ''} cannot fill "
            f"a batch on {count} devices; use fewer devices"
        )
    fitting = min(batch_size, samples)
    return fitting - fitting % count


@contextlib.contextmanager
def distributed_over(distribution, model):
    """Context: ``distribution`` (None: nothing to do) set globally and the variables of
    ``model`` laid out as it wants them (replicated on every device for data parallelism),
    whether or not the model was made under it; the previous distribution restored after."""
    if distribution is None:
        yield
        return
    import keras

    previous = keras.distribution.distribution()
    keras.distribution.set_distribution(distribution)
    try:
        for variable in model.variables:
            layout = distribution.get_variable_layout(variable)
            variable.assign(keras.distribution.distribute_tensor(variable.value, layout))
        yield
    finally:
        keras.distribution.set_distribution(previous)


def batch_input(distribution, batch: np.ndarray):
    """``batch`` (the global batch, the same on every process) ready for ``predict_on_batch``:
    split over the local devices on one process; on several, left whole (every process then
    computes the whole batch, so that the result is readable on each)."""
    if distribution is None or process_shard(distribution)[1] > 1:
        return batch
    import keras

    return keras.distribution.distribute_tensor(batch, distribution.get_data_layout(batch.shape))
