"""The pipelined prediction engine behind ``predict`` and :func:`~napari_deeplab.inference.segment_stack`.

Each input goes through four stages::

    prepare (workers)  ->  model (calling thread, full batches)  ->  finish (workers)  ->  commit (one thread)

- **prepare** ``(index, item) -> Prepared | Failed``: read/decode and resize to the model's
  input (:func:`~napari_deeplab.inference.model_input`), in a pool of ``workers`` threads;
- **model** ``(inputs N x S x S x 3 float32) -> per-photo outputs``: in the calling thread, on
  batches of ``batch_size`` prepared photos (the last one may be partial);
- **finish** ``(context, output) -> result``: upsampling, and for ``predict`` encoding and
  staging the sample's files, in the same pool;
- **commit** ``(results) -> outcomes``: optional, in one thread, strictly in input order, on
  groups of consecutive finished results (one lock, journal and id-list rewrite per group:
  :func:`~napari_deeplab.cihp.commit_samples`).

Outcomes are yielded in input order. At most ``max_in_flight`` inputs are between being taken
from the input iterator and being yielded, so memory is bounded for any number of photos and
the input is never read more than that far ahead of the consumer. Closing the generator
(napari's Cancel; Ctrl+C raises KeyboardInterrupt in the calling thread, which closes it)
cancels the queued work, waits for the tasks that are running (one photo each, and the commit
group in hand, which completes), discards the results that were not committed, and leaves no
thread behind.

``workers=1`` runs every stage in the calling thread, one batch at a time (the serial path,
reading only ``batch_size`` photos ahead); its outcomes are the same, byte for byte.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class Prepared:
    """A prepared input: ``model_input`` (S x S x 3 float32) and the ``context`` that
    ``finish`` needs (e.g. the photo's shape and path)."""

    model_input: np.ndarray
    context: Any


@dataclass
class Failed:
    """An input that failed before the model: ``outcome`` is yielded in its place."""

    outcome: Any


class StageClock:
    """CPU time spent in each stage, in seconds, summed over inputs: ``seconds[name]``.

    ``process=False`` (thread CPU time, ``time.thread_time``) measures the calling thread's
    own work, right under parallel workers; ``process=True`` (``time.process_time``) also
    counts the threads a library starts for one call (OpenCV, the model), right only when
    one stage runs at a time (``workers=1``)."""

    def __init__(self, process: bool = False):
        self.seconds: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self._clock = time.process_time if process else time.thread_time
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def __call__(self, stage: str, count: int = 1):
        start = self._clock()
        try:
            yield
        finally:
            spent = self._clock() - start
            with self._lock:
                self.seconds[stage] = self.seconds.get(stage, 0.0) + spent
                self.counts[stage] = self.counts.get(stage, 0) + count

    def milliseconds_per_item(self) -> dict[str, float]:
        """Each stage's CPU milliseconds per input it handled."""
        return {
            stage: 1000 * seconds / max(self.counts[stage], 1)
            for stage, seconds in self.seconds.items()
        }


def timed(clock: StageClock | None, stage: str, count: int = 1):
    """``clock(stage)``, or a context that does nothing without a clock."""
    return contextlib.nullcontext() if clock is None else clock(stage, count)


class _CallingThread:
    """The executor of ``workers=1``: runs each task at once, in the calling thread."""

    def submit(self, function, *args) -> Future:
        future: Future = Future()
        try:
            future.set_result(function(*args))
        except Exception as error:  # handed to the future, as a pool would; Ctrl+C goes on up
            future.set_exception(error)
        return future

    def shutdown(self, wait=True, cancel_futures=False) -> None:
        pass


@dataclass
class _Slot:
    """One input on its way: its futures, then its outcome."""

    index: int
    prepared: Future
    finished: Future | None = None
    outcome: Any = None
    resolved: bool = False
    committing: bool = False
    failed: bool = False


def default_in_flight(batch_size: int, workers: int) -> int:
    """How many inputs may be in flight: a batch being prepared, one at the model, one being
    finished, plus a photo per worker."""
    return batch_size if workers <= 1 else 3 * batch_size + 2 * workers


def run_pipeline(
    items: Iterable,
    *,
    prepare: Callable[[int, Any], Prepared | Failed],
    model: Callable[[np.ndarray], list],
    finish: Callable[[Any, Any], Any],
    batch_size: int,
    workers: int,
    commit: Callable[[list], list] | None = None,
    discard: Callable[[Any], None] | None = None,
    max_in_flight: int | None = None,
    clock: StageClock | None = None,
) -> Generator:
    """Run ``items`` through prepare -> model -> finish [-> commit] (see the module's doc) and
    yield one outcome per item, in order: ``Failed.outcome``, else ``commit``'s outcome for the
    item, else ``finish``'s result. ``model(inputs)`` gets N x S x S x 3 float32 and returns
    N per-photo outputs. ``discard(result)`` cleans up a finished result that will never be
    committed (the generator was closed). ``workers=1``: everything in the calling thread."""
    if batch_size < 1 or workers < 1:
        raise ValueError("batch_size and workers must be at least 1")
    limit = max(max_in_flight or default_in_flight(batch_size, workers), batch_size)
    pool = ThreadPoolExecutor(workers, "napari-deeplab") if workers > 1 else _CallingThread()
    committer = (
        ThreadPoolExecutor(1, "napari-deeplab-commit")
        if commit is not None and workers > 1
        else _CallingThread()
    )
    inputs = enumerate(items)
    exhausted = False
    slots: deque[_Slot] = deque()  # taken from the input, not yet yielded, in order
    unbatched: deque[_Slot] = deque()  # being prepared, not yet given to the model
    batch: list[tuple[_Slot, Prepared]] = []
    committing: tuple[Future, list[_Slot]] | None = None
    failures = 0  # slots of inputs that failed before the model
    try:
        while True:
            # failed inputs hold no photo: they do not count, so batches are always full
            while not exhausted and len(slots) - failures < limit:
                try:
                    index, item = next(inputs)
                except StopIteration:
                    exhausted = True
                    break
                slot = _Slot(index, pool.submit(prepare, index, item))
                del item  # a photo is not held here while it waits for a worker
                slots.append(slot)
                unbatched.append(slot)
            while unbatched and unbatched[0].prepared.done():
                slot = unbatched.popleft()
                prepared = slot.prepared.result()
                del slot.prepared  # the model input is held by the batch only
                if isinstance(prepared, Failed):
                    slot.outcome, slot.resolved, slot.failed = prepared.outcome, True, True
                    failures += 1
                else:
                    batch.append((slot, prepared))
            if commit is not None and (committing is None or committing[0].done()):
                if committing is not None:
                    _take_outcomes(*committing)
                committing = _next_group(slots, committer, commit)
            elif commit is None:
                for slot in slots:
                    if slot.finished is not None and slot.finished.done() and not slot.resolved:
                        slot.outcome, slot.resolved = slot.finished.result(), True
            if slots and slots[0].resolved:
                slot = slots.popleft()
                failures -= slot.failed
                yield slot.outcome
                continue
            # after the yields: a result ready is never held back by the next model call
            if len(batch) >= batch_size or (batch and exhausted and not unbatched):
                _run_model(model, batch[:batch_size], finish, pool, clock)
                del batch[:batch_size]
                continue
            if exhausted and not slots:
                return
            pending = [
                slot.finished
                for slot in slots
                if slot.finished is not None and not slot.finished.done()
            ]
            if unbatched:
                pending.append(unbatched[0].prepared)
            if committing is not None:
                pending.append(committing[0])
            if not pending:
                raise RuntimeError("the prediction pipeline stalled (a bug): nothing to wait for")
            wait(pending, return_when=FIRST_COMPLETED)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        committer.shutdown(wait=True, cancel_futures=True)
        if committing is not None and committing[0].cancelled():  # never started
            for slot in committing[1]:
                slot.committing = False  # so its staged files are discarded just below
        for slot in slots:
            finished = slot.finished
            if (
                discard is not None
                and finished is not None
                and not slot.resolved
                and not slot.committing
                and finished.done()
                and not finished.cancelled()
                and finished.exception() is None
            ):
                discard(finished.result())


def _run_model(model, batch: list, finish, pool, clock) -> None:
    """The model on one batch (in the calling thread), then each photo's finish submitted."""
    with timed(clock, "model", len(batch)):
        outputs = model(np.stack([prepared.model_input for _, prepared in batch]))
    for (slot, prepared), output in zip(batch, outputs, strict=True):
        slot.finished = pool.submit(finish, prepared.context, output)


def _next_group(slots, committer, commit) -> tuple[Future, list[_Slot]] | None:
    """Submit the commit of the finished results that come next in input order (up to the first
    unfinished one), or None when there are none."""
    group = []
    for slot in slots:
        if slot.resolved or slot.committing:
            continue
        if slot.finished is None or not slot.finished.done():
            break
        group.append(slot)
    if not group:
        return None
    results = [slot.finished.result() for slot in group]
    for slot in group:
        slot.committing = True
    return committer.submit(commit, results), group


def _take_outcomes(future: Future, group: list[_Slot]) -> None:
    for slot, outcome in zip(group, future.result(), strict=True):
        slot.outcome, slot.resolved = outcome, True
