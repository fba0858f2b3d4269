"""The teacher's render stage: a pool of threads sized to the actor's CPUs decodes a shard's
images and renders its batches of views, one batch ahead of the model, into reused buffers
(pinned when the model is on a GPU).

The work that matters releases the GIL (simplejpeg's and Pillow's decode, torch's and
Pillow's resize, torch's arithmetic), so threads scale with cores. A batch is split into one
contiguous chunk of positions per thread, each rendered by that thread's own
:class:`ViewRenderer` (a mixing plan's partner cache is per renderer) straight into its slice
of the batch buffer. Rendering is a pure function of its inputs, so the batches are bitwise
those of a serial pass, whatever the number of threads.
"""

import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import torch


def actor_cpus() -> int:
    """CPUs this process may run on (the actor's: Ray sets its torch threads to them)."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        affinity = os.cpu_count() or 1
    return max(1, min(affinity, torch.get_num_threads()))


def render_threads(device: torch.device) -> int:
    """Render threads for a teacher on ``device``: every CPU of the actor, or 0 (render in
    the caller, serially) on a CPU model with one CPU, whose only core the model needs."""
    cpus = actor_cpus()
    return cpus if device.type == "cuda" or cpus >= 2 else 0


def batch_buffers(count: int, pinned: bool = False):
    """``buffer(index, shape)``: float32 batch buffers reused in turn (batch ``index`` gets
    buffer ``index % count``, grown to ``shape``; page-locked with ``pinned``), so a pass does
    not page in fresh memory for every batch; a buffer is overwritten ``count`` batches later."""
    held: list[torch.Tensor | None] = [None] * count

    def buffer(index: int, shape: tuple[int, ...]) -> torch.Tensor:
        slot = held[index % count]
        if slot is None or slot.shape[1:] != shape[1:] or slot.shape[0] < shape[0]:
            held[index % count] = slot = torch.empty(shape, dtype=torch.float32, pin_memory=pinned)
        return slot[: shape[0]]

    return buffer


def one_intra_op_thread() -> None:
    """Make torch's ops in the calling (pool) thread run on that thread alone.

    The pool's threads are the parallelism: each thread's torch ops would otherwise start
    their own team of ``torch.get_num_threads()`` OpenMP threads, oversubscribing the cores
    (measured: 25-30 % more CPU per view with two render threads on two cores). The setting is
    per thread for OpenMP; torch also keeps it as the default for threads that start later, so
    it is called only in pool threads, after the caller's own thread count is set (the
    caller's thread keeps its own), and the pool puts the default back when it closes."""
    torch.set_num_threads(1)


class RenderPool:
    """``threads`` render threads (0: everything runs in the caller), each with its own
    renderer from ``make_renderer()``."""

    def __init__(self, threads: int, make_renderer: Callable):
        self.threads = threads
        self._make = make_renderer
        self._local = threading.local()
        self._pool = None
        self._caller_threads = torch.get_num_threads()  # fixed before the pool's threads start
        if threads > 0:
            self._pool = ThreadPoolExecutor(
                threads, thread_name_prefix="kdcache-render", initializer=one_intra_op_thread
            )

    def __enter__(self) -> "RenderPool":
        return self

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            torch.set_num_threads(self._caller_threads)  # torch's default for later threads

    def renderer(self):
        """The calling thread's renderer (made on first use)."""
        made = getattr(self._local, "renderer", None)
        if made is None:
            made = self._local.renderer = self._make()
        return made

    def each(self, function: Callable, items: Sequence) -> None:
        """``function(item)`` for every item, on the pool's threads (in the caller without),
        raising the first error."""
        if self._pool is None:
            for item in items:
                function(item)
            return
        for future in [self._pool.submit(function, item) for item in items]:
            future.result()

    def chunks(self, count: int) -> list[slice]:
        """``count`` positions split into at most one contiguous slice per thread."""
        parts = max(1, min(self.threads, count))
        bounds = [count * part // parts for part in range(parts + 1)]
        return [slice(a, b) for a, b in zip(bounds, bounds[1:], strict=False) if b > a]

    def batches(self, work: list, allocate: Callable, render: Callable) -> Iterator[torch.Tensor]:
        """The batch of each work item in order. ``allocate(item)`` gives the item's batch
        buffer (called here, in the caller's thread); ``render(renderer, item, out, chunk)``
        fills ``out[chunk]`` (with the whole slice, serially, it may return another tensor: the
        batch). The next item's chunks render while the caller uses the current batch."""
        if self._pool is None:
            for item in work:
                yield render(self.renderer(), item, allocate(item), slice(None))
            return
        ahead = self._submit(allocate, render, work[0]) if work else None
        for item in work[1:]:
            batch = _gathered(*ahead)
            ahead = self._submit(allocate, render, item)
            yield batch
        if ahead is not None:
            yield _gathered(*ahead)

    def _submit(self, allocate: Callable, render: Callable, item) -> tuple:
        out = allocate(item)

        @torch.inference_mode()
        def task(chunk: slice) -> None:
            render(self.renderer(), item, out, chunk)

        return out, [self._pool.submit(task, chunk) for chunk in self.chunks(out.shape[0])]


def _gathered(out: torch.Tensor, futures: list[Future]) -> torch.Tensor:
    """``out`` once every chunk of it is rendered (the first error raised)."""
    for future in futures:
        future.result()
    return out


def prepare_all(positions: Sequence[int], prepare: Callable, parallel: bool = True) -> None:
    """``prepare(position)`` for each position (decoding its image), on a thread per CPU of
    the actor (``parallel``, else in the caller); errors are raised as a serial pass would
    raise them (the first position's)."""
    threads = min(actor_cpus(), len(positions)) if parallel else 1
    if threads < 2:
        for position in positions:
            prepare(position)
        return
    with ThreadPoolExecutor(threads, thread_name_prefix="kdcache-decode") as pool:
        futures = [pool.submit(prepare, position) for position in positions]
        for future in futures:
            future.result()
