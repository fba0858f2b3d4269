"""Turning encoded images and rows of view params into the model's input tensors.

Part of the contract: the teacher job and the trainer both build inputs only through
:class:`ViewRenderer`, so a replayed view is bitwise the tensor the teacher saw (same machine
and library versions). Rendering is a pure function of (the shard's encoded images, the
params, the output size, the renderer). The plan names the renderer (``plan.renderer``,
recorded in the cache); every renderer renders in timm's order:

1. crop and resize to ``size x size`` (bilinear, antialiased when shrinking);
2. mirrored if ``flip`` is 1;
3. RandAugment (timm's PIL ops on uint8, bilinear resampling, grey fill 128;
   ``pipeline.views.randaugment``);
4. colour jitter, then random erasing, in float32 on [0, 1] (``pipeline.views.augment``);
5. Mixup or CutMix with the partner's view 1-4 at the same size (``pipeline.views.mix``);

and the caller normalises with its model's mean and std. The crop's pixel box is
``floor(fraction * image_size + 0.5)`` for top, left, height and width (height and width at
least 1, clipped to the image). The renderers differ in how step 1 is done:

* ``cpu/4`` (the default): the planned box itself at every reduction
  (``pipeline.views.exact_box``: a JPEG decoded at 1/r only when the box keeps twice the
  output's pixels there, the fractional box resampled), on the image as Pillow decodes it
  (baseline JPEGs by simplejpeg with fancy upsampling: the same pixels), then flipped and
  RandAugmented in uint8, and converted to float32 / 255 once.
* ``cpu/3``: ``cpu/2``'s steps on the image as renderer cpu/3 decodes it: a
  baseline JPEG by simplejpeg without fancy upsampling (``pipeline.views.jpeg_decode``), the
  rest as ``cpu/2``.
* ``cpu/2``: the image decoded as ``pipeline.views.source`` says (at 1/2, 1/4 or
  1/8 of its size in the DCT domain when the crop is at least 2, 4 or 8 times the output on both
  sides, the box then taken on the reduced image), the box cropped, resized in uint8
  (``torch.nn.functional.interpolate``, bilinear, antialias: Pillow's fixed-point filter),
  flipped and RandAugmented in uint8, then converted to float32 / 255 once.
* ``cpu/1`` (caches made before renderers had versions): the whole image converted to float32
  / 255 first, resized in float (torchvision, bilinear, antialias), RandAugment on the view
  rounded to uint8 and back.
* ``device/1``: batches of views as tensors on any device (``pipeline.views.device``).

Every geometric quantity is a fraction of the source or of the view, so a teacher at 64 px and
a student at 32 px render the same view at their own resolution; only the pixel rounding of
the boxes and the resampling differ between sizes.
"""

import functools
import io
import math
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import get_worker_info
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

from kdcache.pipeline.views.exact_box import box_view, reduction, resize_uint8
from kdcache.pipeline.views.jpeg_decode import check_decoder
from kdcache.pipeline.views.mix import mix_weight
from kdcache.pipeline.views.pixel_limit import check_pixels
from kdcache.pipeline.views.pixel_ops import (
    apply_erasing,
    apply_jitter,
    apply_randaugment,
    mix_views,
    randaugment_image,
)
from kdcache.pipeline.views.plan import ViewPlan
from kdcache.pipeline.views.source import SourceImage, as_source

CACHE_BYTES = 128 * 2**20  # uint8 views a mixing plan's renderer keeps for partners
LATE_NORMALISED = ("cpu/1", "device/1")  # renderers that normalise a batch once it is made
UINT8_RENDERERS = ("cpu/2", "cpu/3", "cpu/4")  # renderers that resize in uint8


def decode_image(data: bytes, channels: int, fit: int | None = None) -> torch.Tensor:
    """Encoded image bytes -> uint8 tensor (C, H, W) with C = ``channels`` (1 or 3); with
    ``fit``, an image with a side above it is shrunk to fit ``fit`` x ``fit`` (a JPEG decoded
    reduced first). Images over the pixel limit are refused before decoding."""
    with Image.open(io.BytesIO(data)) as image:
        check_pixels(image)
        if fit is not None and max(image.size) > fit:
            image.draft(image.mode, (fit, fit))
            image = image.convert("L" if channels == 1 else "RGB")
            image.thumbnail((fit, fit))
        pixels = np.asarray(image.convert("L" if channels == 1 else "RGB"))
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1).contiguous()


def crop_box(values: dict[str, float], height: int, width: int) -> tuple[int, int, int, int]:
    """Pixel box (top, left, height, width) of one view's crop on a ``height x width`` source."""
    h = min(height, max(1, math.floor(values["crop_height"] * height + 0.5)))
    w = min(width, max(1, math.floor(values["crop_width"] * width + 0.5)))
    top = min(height - h, math.floor(values["crop_top"] * height + 0.5))
    left = min(width - w, math.floor(values["crop_left"] * width + 0.5))
    return top, left, h, w


def source_image(data: bytes, channels: int) -> SourceImage:
    """An encoded image as the renderers take it (decoded on demand, once per reduction)."""
    return SourceImage(data, channels)


def check_renderer(plan: ViewPlan) -> None:
    """Refuse in one line a plan this process cannot render exactly: ``cpu/3`` or ``cpu/4``
    with another simplejpeg than the one that defines it (called by the renderer, and up front
    by the teach driver and the trainer's loader, before any work starts)."""
    if plan.renderer in ("cpu/3", "cpu/4"):
        check_decoder(plan.renderer)


class ViewRenderer:
    """Renders planned views from params rows: the one code path of teacher job and trainer.

    ``images`` given to :meth:`render` and :meth:`render_batch` are a shard's images by
    position: :class:`SourceImage` (``source_image``) or decoded uint8 (C, H, W) tensors (then
    without reduced decoding). ``device`` is where the ``device/1`` renderer works (default
    CPU); the CPU renderers ignore it."""

    def __init__(self, plan: ViewPlan, device: str | torch.device | None = None):
        self.plan = plan
        self.names = plan.param_names
        self.device = torch.device(device or "cpu")
        self._device_views = None
        self._cache_owner, self._cache, self._cache_bytes = None, OrderedDict(), 0
        check_renderer(plan)
        if plan.renderer == "device/1":
            from kdcache.pipeline.views.device import DeviceViews

            self._device_views = DeviceViews(plan, self.device)

    def values(self, params: np.ndarray) -> dict[str, float]:
        """One params row as ``{column name: value}``."""
        return dict(zip(self.names, params.tolist(), strict=True))

    def base_view(self, image, values: dict[str, float], size: int) -> torch.Tensor:
        """One image's own view (everything but mixing): float32 (C, size, size) on [0, 1]."""
        return self._base_views([image], [values], size)[0]

    def _base_views(self, images: list, values: list[dict], size: int) -> torch.Tensor:
        """Own views of several images at one size: float32 (B, C, size, size)."""
        return self._views(images, [None] * len(images), values, size)

    def _views(
        self, images: list, keys: list, values: list[dict], size: int, out=None, normalise=None
    ) -> torch.Tensor:
        """Own views (everything but mixing) at one size: float32 (B, C, size, size); ``keys``
        (or None) name the views for the cache of a mixing plan's uint8 views. cpu/2, cpu/3 and
        cpu/4 write into ``out`` (a float32 (>= B, C, size, size) buffer) if given, and normalise each
        view as it is made with ``normalise`` = (mean, std) tensors if given."""
        if self.plan.renderer == "cpu/1":
            return torch.stack(
                [self._base_view_v1(i, v, size) for i, v in zip(images, values, strict=True)]
            )
        if self._device_views is not None:
            return self._device_views.base_views([as_source(i) for i in images], values, size)
        views = None
        for index, (image, key, v) in enumerate(zip(images, keys, values, strict=True)):
            pixels = self._cached(key) if key is not None else None
            if pixels is None:
                pixels = self._uint8(as_source(image), v, size)
                self._remember(key, pixels)
            if views is None:
                views = _buffer(out, (len(images), *pixels.shape))
            view = views[index]
            torch.div(pixels, 255.0, out=view)  # float32 division, one pass
            if (
                self.plan.erase_prob > 0
                and (erased := apply_erasing(view, v, self.plan.erase_mode)) is not view
            ):
                view.copy_(erased)
            if normalise is not None:
                view.sub_(normalise[0]).div_(normalise[1])
        return views

    def _uint8(self, source: SourceImage, values: dict[str, float], size: int) -> torch.Tensor:
        """cpu/2, cpu/3 or cpu/4 steps 1-3 and colour jitter: uint8 (C, size, size)."""
        pixels_of = {"cpu/3": self._pixels_v3, "cpu/4": self._pixels_v4}.get(
            self.plan.renderer, self._pixels_v2
        )
        return pixels_of(source, values, size)

    @property
    def uint8_views(self) -> bool:
        """True when a view is its uint8 pixels / 255, no step after (a uint8 renderer,
        no erasing, no mixing): :meth:`render_uint8` then gives the view before that division."""
        return (
            self.plan.renderer in UINT8_RENDERERS
            and self.plan.erase_prob == 0
            and not self.plan.mixes
        )

    def render_uint8(self, images: Sequence, params: np.ndarray, position: int, size: int):
        """The uint8 (C, size, size) pixels whose / 255 is :meth:`render`'s view (only when
        :attr:`uint8_views`; :func:`float_batch` turns them into views, bitwise)."""
        return self._uint8(as_source(images[position]), self.values(params[position]), size)

    def _cached(self, key) -> torch.Tensor | None:
        pixels = self._cache.get(key)
        if pixels is not None:
            self._cache.move_to_end(key)
        return pixels

    def _remember(self, key, pixels: torch.Tensor) -> None:
        """Keep a mixing plan's uint8 view: a partner's view is its own view of that view
        index, so each is made once per shard (up to ``CACHE_BYTES``, oldest dropped)."""
        if key is None:
            return
        self._cache[key] = pixels
        self._cache_bytes += pixels.numel()
        while self._cache_bytes > CACHE_BYTES:
            _, dropped = self._cache.popitem(last=False)
            self._cache_bytes -= dropped.numel()

    def _keys(self, images, params: np.ndarray, positions: list[int], size: int) -> list:
        """Cache keys of views (None without mixing): (position, size, params row); the cache
        is emptied when another shard's images come."""
        if not self.plan.mixes or self.plan.renderer not in UINT8_RENDERERS:
            return [None] * len(positions)
        if self._cache_owner is not images:
            self._cache_owner, self._cache, self._cache_bytes = images, OrderedDict(), 0
        return [(p, size, params[p].tobytes()) for p in positions]

    def _pixels_v2(self, source: SourceImage, values: dict[str, float], size: int):
        """cpu/2 steps 1-3 and colour jitter, on uint8: (C, size, size)."""
        return self._uint8_view(source, source.hwc, values, size)

    def _pixels_v3(self, source: SourceImage, values: dict[str, float], size: int):
        """cpu/3: cpu/2's steps on the image as its own decoder gives it."""
        return self._uint8_view(source, source.fast_hwc, values, size)

    def _uint8_view(self, source: SourceImage, decoded, values: dict[str, float], size: int):
        """cpu/2, cpu/3: box (taken again on the reduced grid), reduced decode (``decoded(reduce)``:
        uint8 (H, W, C)), uint8 resize, then :meth:`_finish`: (C, size, size)."""
        top, left, h, w = crop_box(values, source.height, source.width)
        reduce = source.reduction_for(h, w, size)
        if reduce > 1:
            top, left, h, w = crop_box(values, *source.reduced_size(reduce))
        crop = decoded(reduce)[top : top + h, left : left + w].permute(2, 0, 1)[None]
        if (h, w) != (size, size):
            crop = resize_uint8(crop, size)
        return self._finish(crop[0], values)

    def _pixels_v4(self, source: SourceImage, values: dict[str, float], size: int):
        """cpu/4: the planned box at any reduction (``pipeline.views.exact_box``), then
        :meth:`_finish`: (C, size, size)."""
        box = crop_box(values, source.height, source.width)
        reduce = reduction(source.format == "JPEG" and source.data is not None, *box[2:], size)
        return self._finish(box_view(source.exact_hwc(reduce), box, reduce, size), values)

    def _finish(self, view: torch.Tensor, values: dict[str, float]) -> torch.Tensor:
        """Flip, RandAugment and colour jitter of a resized uint8 (C, size, size) view."""
        if values["flip"] >= 0.5:
            view = view.flip(-1)
        if not (self.plan.randaugment or any(self.plan.color_jitter)):
            return view
        image = to_pil(view)
        if self.plan.randaugment:
            image = randaugment_image(image, values, self.plan.randaugment)
        if any(self.plan.color_jitter):
            image = apply_jitter(image, values)
        return from_pil(image)

    def _colour(self, view: torch.Tensor, values: dict[str, float]) -> torch.Tensor:
        """Step 4 in float (cpu/1): colour jitter and erasing."""
        if any(self.plan.color_jitter):
            view = apply_jitter(view, values)
        if self.plan.erase_prob > 0:
            view = apply_erasing(view, values, self.plan.erase_mode)
        return view

    def _base_view_v1(self, image, values: dict[str, float], size: int) -> torch.Tensor:
        """cpu/1: the whole image to float, then crop, resize, flip, RandAugment, colour."""
        pixels = image.legacy_chw() if isinstance(image, SourceImage) else image
        top, left, h, w = crop_box(values, pixels.shape[-2], pixels.shape[-1])
        pixels = pixels.to(torch.float32) / 255.0
        view = F.resized_crop(
            pixels, top, left, h, w, [size, size], InterpolationMode.BILINEAR, antialias=True
        )
        if values["flip"] >= 0.5:
            view = view.flip(-1)
        if self.plan.randaugment:
            view = apply_randaugment(view, values, self.plan.randaugment)
        return self._colour(view, values)

    def render(
        self, images: Sequence, params: np.ndarray, position: int, size: int
    ) -> torch.Tensor:
        """View of the shard's sample at ``position``: ``images`` are the shard's images (decoded
        on access is fine) and ``params`` its (n, P) params of that view."""
        return self.render_batch(images, params, [position], size)[0]

    def render_batch(
        self,
        images: Sequence,
        params: np.ndarray,
        positions: Sequence[int],
        size: int,
        *,
        normalise: tuple[Sequence[float], Sequence[float]] | None = None,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Views of several positions at one size: float32 (B, C, size, size), each bitwise what
        :meth:`render` gives for it alone; with ``normalise`` = (mean, std) normalised as
        :func:`normalize` does (bitwise). ``out``: a float32 buffer of at least (B, C, size,
        size) the views may be written into (the result is then a slice of it)."""
        positions = [int(p) for p in positions]
        values = [self.values(params[p]) for p in positions]
        own = [images[p] for p in positions]
        keys = self._keys(images, params, positions, size)
        early = None if normalise is None or self.plan.mixes else _stats(*normalise)
        views = self._views(own, keys, values, size, out, early)
        if self.plan.mixes:
            for index, v in enumerate(values):
                if v["mix_mode"] > 0:
                    partner = int(v["mix_partner"])
                    key = self._keys(images, params, [partner], size)
                    other = self._views(
                        [images[partner]], key, [self.values(params[partner])], size
                    )
                    views[index] = mix_views(views[index], other[0].to(views.device), v)
        if normalise is not None and (early is None or self.plan.renderer in LATE_NORMALISED):
            views = normalize(views, *normalise, inplace=True)
        return views

    def label_weight(self, params: np.ndarray, size: int) -> float:
        """Weight of the sample's own label in its view at ``size`` (1 unless mixed)."""
        return mix_weight(self.values(params), size) if self.plan.mixes else 1.0

    def partner(self, params: np.ndarray) -> int | None:
        """Position of the view's mixing partner in its shard, or None if it is not mixed."""
        if not self.plan.mixes:
            return None
        values = self.values(params)
        return int(values["mix_partner"]) if values["mix_mode"] > 0 else None


def _buffer(out: torch.Tensor | None, shape: tuple[int, ...]) -> torch.Tensor:
    """``out[:B]`` if it holds float32 views of ``shape`` (B, C, H, W), else a new tensor."""
    fits = out is not None and out.dtype == torch.float32 and out.device.type == "cpu"
    if fits and out.shape[1:] == shape[1:] and out.shape[0] >= shape[0] and out.is_contiguous():
        return out[: shape[0]]
    return torch.empty(shape, dtype=torch.float32)


def _stats(mean: Sequence[float], std: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) as (C, 1, 1) float32 CPU tensors, as :func:`normalize` makes them."""
    return _stats_on(tuple(mean), tuple(std), torch.float32, torch.device("cpu"))


def to_pil(view: torch.Tensor) -> Image.Image:
    """A uint8 (C, H, W) view as a PIL image (mode L or RGB)."""
    pixels = np.ascontiguousarray(view.permute(1, 2, 0).numpy())
    return Image.fromarray(pixels[:, :, 0] if view.shape[0] == 1 else pixels)


def from_pil(image: Image.Image) -> torch.Tensor:
    """A PIL image (mode L or RGB) as a contiguous uint8 (C, H, W) tensor."""
    pixels = np.array(image)
    pixels = pixels[:, :, None] if pixels.ndim == 2 else pixels
    return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()


def normalize(
    batch: torch.Tensor, mean: Sequence[float], std: Sequence[float], *, inplace: bool = False
) -> torch.Tensor:
    """(x - mean) / std per channel, for a (..., C, H, W) tensor (``inplace``: overwriting
    ``batch``, the same values without a second batch in memory)."""
    mean_t, std_t = _stats_on(tuple(mean), tuple(std), batch.dtype, batch.device)
    return (batch.sub_(mean_t) if inplace else torch.sub(batch, mean_t)).div_(std_t)


def float_batch(
    views: Sequence[torch.Tensor],
    normalise: tuple[Sequence[float], Sequence[float]] | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Views (C, H, W) as one float32 batch: uint8 ones (:meth:`ViewRenderer.render_uint8`)
    divided by 255, float ones copied, each then normalised with ``normalise`` = (mean, std)
    if given; bitwise ``normalize(torch.stack(rendered views), mean, std)``. Written into
    ``out`` (float32 (B, C, H, W)) if given, else into a new batch: in a DataLoader worker in
    shared memory (sent to the main process without a copy)."""
    views = list(views)
    out = shared_empty((len(views), *views[0].shape)) if out is None else out
    stats = None if normalise is None else _stats(*normalise)
    for view, slot in zip(views, out, strict=True):
        if view.dtype == torch.uint8:
            torch.div(view, 255.0, out=slot)  # as ViewRenderer._views does
        else:
            slot.copy_(view)
        if stats is not None:
            slot.sub_(stats[0]).div_(stats[1])
    return out


def shared_empty(shape: tuple[int, ...]) -> torch.Tensor:
    """An uninitialised float32 tensor, in shared memory inside a DataLoader worker (as
    ``default_collate`` makes its batches there)."""
    if get_worker_info() is None:
        return torch.empty(shape, dtype=torch.float32)
    base = torch.empty(0, dtype=torch.float32)
    storage = base._typed_storage()._new_shared(math.prod(shape), device=base.device)
    return base.new(storage).resize_(shape)


@functools.lru_cache(maxsize=64)
def _stats_on(mean: tuple, std: tuple, dtype: torch.dtype, device: torch.device):
    """(mean, std) as (C, 1, 1) tensors of ``dtype`` on ``device`` (made once; read only)."""
    return (torch.tensor(mean, dtype=dtype, device=device).view(-1, 1, 1),
            torch.tensor(std, dtype=dtype, device=device).view(-1, 1, 1))  # fmt: skip
