"""One shard through the teachers: read and check the tar, build every planned view, run the
teachers in batches and reduce their logits to top-k targets. No Ray here: the job calls this."""

import contextlib
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch

from kdcache.pipeline.cache import ShardTargets, draw_classes, index_dtype, reduce_logits
from kdcache.pipeline.data import Manifest, ShardError, ShardInfo, checked_samples, sample_image
from kdcache.pipeline.teach.feature_taps import FeatureTaps
from kdcache.pipeline.teach.models import ModelSpec
from kdcache.pipeline.teach.render_pool import (
    RenderPool,
    batch_buffers,
    prepare_all,
    render_threads,
)
from kdcache.pipeline.teach.teachers import Teacher
from kdcache.pipeline.views import (
    DEFAULT_RENDERER,
    SourceImage,
    ViewPlan,
    ViewRenderer,
    source_image,
)


def read_shard_images(
    manifest: Manifest,
    shard: ShardInfo,
    *,
    decode: bool = True,
    renderer: str = DEFAULT_RENDERER,
) -> list[SourceImage]:
    """A shard's images, each sample checked against the manifest (key, position, sha1, count:
    :func:`checked_samples`); with ``decode`` each is decoded here as ``renderer`` renders from
    it (once, on a thread per CPU; views reuse the decode), else only its header is read and
    :func:`decode_block` decodes rows as needed."""
    images, url, keys = [], None, []
    for sample in checked_samples(manifest, shard):
        try:
            encoded = sample_image(sample, manifest.image_extensions)
            images.append(source_image(encoded, manifest.channels))
        except Exception as error:  # PIL and decoder errors
            raise _unreadable(sample["__url__"], sample["__key__"], error) from error
        url = sample["__url__"]
        keys.append(sample["__key__"])
    if decode:  # decoded here: a corrupt image is this shard's error
        decode_block(images, range(len(images)), url, keys, renderer)
    return images


def row_blocks(
    rows: int,
    block_rows: int,
    batch_size: int,
    sizes: Sequence[int] | None = None,
    budget: int | None = None,
) -> list[np.ndarray]:
    """Positions ``0..rows-1`` in blocks of whole batches (``block_rows`` rounded down to a
    multiple of ``batch_size``, at least one batch): every batch of a blocked pass is then the
    batch an unblocked pass makes, so the values are the same. With each position's decoded
    ``sizes`` (bytes) a block also ends before it holds more than ``budget`` bytes; a batch
    whose images alone exceed it is split into blocks of at least one image."""
    step = max(1, block_rows // batch_size) * batch_size
    blocks = [np.arange(start, min(start + step, rows)) for start in range(0, rows, step)]
    if sizes is None or budget is None:
        return blocks
    sized: list[np.ndarray] = []
    for block in blocks:
        held: list[np.ndarray] = []
        for start in range(block[0], block[-1] + 1, batch_size):
            batch = np.arange(start, min(start + batch_size, block[-1] + 1))
            if held and _bytes(held, sizes) + _bytes([batch], sizes) > budget:
                sized.append(np.concatenate(held))
                held = []
            held.append(batch)
            if _bytes(held, sizes) > budget:  # one batch over the budget: split by images
                sized += _split(np.concatenate(held), sizes, budget)
                held = []
        if held:
            sized.append(np.concatenate(held))
    return sized


def _bytes(parts: list[np.ndarray], sizes: Sequence[int]) -> int:
    return sum(int(sizes[i]) for part in parts for i in part)


def _split(positions: np.ndarray, sizes: Sequence[int], budget: int) -> list[np.ndarray]:
    """``positions`` in runs of at most ``budget`` bytes (at least one position each)."""
    runs, run, held = [], [], 0
    for position in positions:
        if run and held + sizes[position] > budget:
            runs.append(np.array(run))
            run, held = [], 0
        run.append(position)
        held += sizes[position]
    return [*runs, np.array(run)] if run else runs


def decoded_bytes(images: Sequence[SourceImage]) -> list[int]:
    """What decoding each image holds at most, counted as 3 bytes a pixel whatever its mode
    (a decode and its conversion to the data's channels), from its header."""
    return [image.width * image.height * 3 for image in images]


# images whose decoded pixels take more are decoded one at a time: a decoder's temporaries
# are then one image's, not one per thread, and the block's byte budget holds
PARALLEL_DECODE_BYTES = 64 << 20


def decode_block(
    images: Sequence[SourceImage],
    positions: np.ndarray,
    url: str,
    keys: Sequence[str],
    renderer: str = DEFAULT_RENDERER,
) -> bool:
    """Decode the images at ``positions`` now, as ``renderer`` renders from them (a corrupt
    one is the shard's error, named by its key), on a thread per CPU of the actor, or one at
    a time when one is over :data:`PARALLEL_DECODE_BYTES`; whether one was (huge images).
    :func:`release` frees them after the block."""

    def prepare(position: int) -> None:
        try:
            images[position].prepare(renderer)
        except Exception as error:  # PIL and decoder errors
            raise _unreadable(url, keys[position], error) from error

    huge = max(decoded_bytes([images[p] for p in positions]), default=0) > PARALLEL_DECODE_BYTES
    prepare_all(positions, prepare, parallel=not huge)
    return huge


def _unreadable(url: str, key: str, error: Exception) -> ShardError:
    return ShardError(f"{url}: sample {key}: unreadable image ({type(error).__name__}: {error})")


def release(images: Sequence[SourceImage]) -> None:
    """Drop every decoded pixel array of ``images`` (block rows and mixing partners alike)."""
    for image in images:
        image.release()


def joined(parts: list[ShardTargets]) -> ShardTargets:
    """Row blocks of a shard's targets, in order, as one block."""
    arrays = [part.arrays() for part in parts]
    return ShardTargets.from_arrays({k: np.concatenate([a[k] for a in arrays]) for k in arrays[0]})


def autocast_for(device: torch.device, precision: str):
    """bf16/fp16 autocast on CUDA when asked; full precision otherwise."""
    if precision == "fp32" or device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def teacher_inputs(
    renderer: ViewRenderer,
    images: Sequence[torch.Tensor],
    view_params: np.ndarray,
    positions: Iterable[int],
    spec: ModelSpec,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """The normalised batch a teacher is fed for ``positions`` of a shard in one view:
    ``images`` and ``view_params`` (n, P) are the whole shard's (mixing partners come from it);
    ``spec`` gives the resolution, mean and std; ``out`` a buffer the batch may be written into
    (``ViewRenderer.render_batch``)."""
    return renderer.render_batch(
        images, view_params, list(positions), spec.resolution,
        normalise=(spec.mean, spec.std), out=out,
    )  # fmt: skip


def overlaps(device: torch.device) -> bool:
    """Whether the next batch is rendered while the model runs (by :func:`render_threads`
    threads, every CPU of the actor): always when the model is on a GPU; on CPU only with at
    least 2 CPUs, else the render threads would only take the model's one core."""
    return render_threads(device) > 0


def rendered_batches(
    plan: ViewPlan,
    images: Sequence[SourceImage],
    params: np.ndarray,
    positions: np.ndarray,
    spec: ModelSpec,
    device: torch.device,
    work: list[tuple[int, int, range]],
    threads: int | None = None,
    timings: dict | None = None,
) -> Iterator[torch.Tensor]:
    """The teacher's normalised input batch of each work item (index, view, rows of
    ``positions``), in order, rendered by ``threads`` threads one batch ahead of the caller
    (default :func:`render_threads`; 0 = in the caller) into two reused buffers (pinned for a
    model on a GPU). ``timings["augment"]`` adds the render threads' seconds."""
    threads = render_threads(device) if threads is None else threads
    threads = 0 if plan.renderer == "device/1" else threads  # device/1 renders on the device
    pinned = device.type == "cuda" and torch.cuda.is_available() and plan.renderer != "device/1"
    buffers = batch_buffers(2, pinned)  # the batch the model runs on and the one rendered ahead
    timings = timings if timings is not None else defaultdict(float)
    lock = threading.Lock()

    def allocate(item: tuple) -> torch.Tensor | None:
        index, _, rows = item
        shape = (len(rows), spec.in_chans, spec.resolution, spec.resolution)
        return None if plan.renderer == "device/1" else buffers(index, shape)

    def render(renderer: ViewRenderer, item: tuple, out: torch.Tensor | None, chunk: slice):
        began = time.perf_counter()
        _, view, rows = item
        part = None if out is None else out[chunk]
        chosen = positions[rows.start : rows.stop][chunk]
        batch = teacher_inputs(renderer, images, params[:, view], chosen, spec, out=part)
        if part is not None and batch.data_ptr() != part.data_ptr() and chunk != slice(None):
            part.copy_(batch)  # a renderer that made its own tensor
        with lock:
            timings["augment"] += time.perf_counter() - began
        return batch

    with RenderPool(threads, lambda: ViewRenderer(plan, device=device)) as pool:
        yield from pool.batches(work, allocate, render)


@torch.inference_mode()
def teacher_targets(
    teacher: Teacher,
    plan: ViewPlan,
    images: list[torch.Tensor],
    params: np.ndarray,
    *,
    topk: int,
    positions: np.ndarray | None = None,
    uniforms: np.ndarray | None = None,
    batch_size: int = 256,
    precision: str = "fp32",
    timings: dict | None = None,
    features: list[dict] | None = None,
    projections: dict[str, np.ndarray | None] | None = None,
    threads: int | None = None,
) -> ShardTargets:
    """A teacher's targets for every view of ``params`` (n, v, P, the whole shard's, as
    ``plan`` made them) at ``positions`` (default all n): blocks of (len(positions), v, ...).

    With ``uniforms`` (len(positions), v, D) (:func:`pipeline.sampled_targets.sample_uniforms`)
    it also draws D class ids per view from the teacher's softmax (``sample_index``).

    ``features`` (a cache's records of the teacher's feature and attention targets, with
    their ``projections``) adds those targets, read in the same forward (:mod:`feature_taps`).

    Batches never span two views, so a view's values do not depend on which other views are
    computed with it (a resumed shard computes exactly what an uninterrupted run did).
    ``threads`` render the views ahead of the model (``pipeline.teach.render_pool``; default
    :func:`render_threads`, 0 = serially in this thread): the same values either way.
    """
    timings = timings if timings is not None else defaultdict(float)
    positions = np.arange(params.shape[0]) if positions is None else np.asarray(positions)
    n, v = len(positions), params.shape[1]
    spec = teacher.spec
    device = next(teacher.model.parameters()).device
    out = _TargetBuffers(n, v, topk, uniforms, features or [])
    taps = FeatureTaps(teacher.model, features or [], projections)
    work = [(index, view, range(start, min(start + batch_size, n))) for index, (view, start)
            in enumerate((view, start) for view in range(v) for start in range(0, n, batch_size))]  # fmt: skip
    batches = rendered_batches(
        plan, images, params, positions, spec, device, work, threads, timings
    )
    for (_, view, rows), batch in zip(work, batches, strict=True):
        began = time.perf_counter()
        batch = batch.to(device, non_blocking=True)
        if device.type == "cuda":
            batch = batch.contiguous(memory_format=torch.channels_last)
        with autocast_for(device, precision), taps:
            logits = teacher.model(batch)
        out.store(slice(rows.start, rows.stop), view, logits, taps.collect(), uniforms)
        timings["infer"] += time.perf_counter() - began
    return out.targets(params[positions], index_dtype(spec.num_classes))


class _TargetBuffers:
    """A shard block's targets as they are computed: (n, v, ...) arrays filled batch by batch."""

    def __init__(self, n: int, v: int, topk: int, uniforms, features: list[dict]):
        self.topk = topk
        self.logits = np.empty((n, v, topk), dtype=np.float32)  # stored per the cache's layout
        self.index = np.empty((n, v, topk), dtype=np.int64)
        self.lse = np.empty((n, v), dtype=np.float32)
        self.samples = None if uniforms is None else np.empty(uniforms.shape, dtype=np.int64)
        self.features = {t["name"]: np.empty((n, v, *t["shape"]), np.float32) for t in features}

    def store(self, rows: slice, view: int, logits: torch.Tensor, taps: dict, uniforms) -> None:
        """One batch's outputs (rows ``rows`` of view ``view``): top-k, features, samples."""
        for name, values in taps.items():
            self.features[name][rows, view] = values.cpu().numpy()
        values, index, lse = reduce_logits(logits, self.topk)
        self.logits[rows, view] = values.cpu().numpy()
        self.index[rows, view] = index.cpu().numpy()
        self.lse[rows, view] = lse.cpu().numpy()
        if self.samples is not None:
            self.samples[rows, view] = draw_classes(logits.float(), uniforms[rows, view])

    def targets(self, params: np.ndarray, classes) -> ShardTargets:
        return ShardTargets(
            params=params,
            topk_logits=self.logits,
            topk_index=self.index.astype(classes),
            logsumexp=self.lse,
            sample_index=None if self.samples is None else self.samples.astype(classes),
            features=self.features,
        )
