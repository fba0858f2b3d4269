"""The augmentation plan: view v of row n is a pure function of (plan seed, n, v).

Part of the contract between ``pipeline`` and ``trainer``. Random numbers come from
counter-based hashes (``pipeline.draws``), so any view of any row can be computed alone, in any
order, on any machine. The plan's params are also stored in the cache, one float32 row per view.

Params layout ``kdcache-params/2``: the columns present depend on the operations the plan
enables; their names (``attrs.plan.param_names``) and meanings (``attrs.plan.param_meaning``)
are in the cache attrs, so a reader needs no kdcache code to tell what a column means. Every
plan has the crop and flip columns first:

====  ============  =====================================================
col   name          meaning
====  ============  =====================================================
0     crop_top      top edge of the crop, fraction of the source height
1     crop_left     left edge of the crop, fraction of the source width
2     crop_height   crop height, fraction of the source height
3     crop_width    crop width, fraction of the source width
4     flip          1 if the crop is mirrored left-right, else 0
====  ============  =====================================================

then, in this order and only when enabled: RandAugment (``pipeline.randaugment``), colour
jitter and random erasing (``pipeline.augment``), Mixup/CutMix (``pipeline.mixing``). A view
is rendered in that order (timm's: crop, flip, RandAugment, colour jitter, erasing, then the
batch-level mixing).

The crop is torchvision's RandomResizedCrop (10 tries of area scale and log-uniform aspect
ratio, then the centre fallback) carried out in fractions, so one box serves every resolution.
"""

import math
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING

import numpy as np

from kdcache._options import option
from kdcache.errors import CacheMismatch, ConfigError
from kdcache.pipeline.views.augment import (
    ERASE_COLUMNS,
    ERASE_MODES,
    JITTER_COLUMNS,
    erase_params,
    jitter_params,
)
from kdcache.pipeline.views.draws import uniform
from kdcache.pipeline.views.mix import MIX_COLUMNS, mix_params
from kdcache.pipeline.views.randaugment import (
    parse_randaugment,
    randaugment_columns,
    randaugment_params,
)

if TYPE_CHECKING:
    from kdcache.pipeline.data import Manifest, ShardInfo

PARAMS_LAYOUT = "kdcache-params/2"
# Renderers, "name/version": what turns params into pixels (``pipeline.views.render``). A cache
# records the one that made it (``attrs.plan.renderer``) and is replayed by that one. cpu/1 is
# the renderer of caches made before renderers had versions (their attrs have no renderer).
# A renderer with its own decoder records it (``attrs.plan.decoder``): it is part of its identity.
RENDERERS = ("cpu/1", "cpu/2", "cpu/3", "cpu/4", "device/1")
DEFAULT_RENDERER = "cpu/4"
LEGACY_RENDERER = "cpu/1"
RENDERER_ALIASES = {"cpu": "cpu/4", "cuda": "device/1", "device": "device/1"}
RENDERER_DECODERS = {
    "cpu/3": "simplejpeg 1.9.0 (libjpeg-turbo; fastdct=False, fastupsample=True)",
    "cpu/4": "simplejpeg 1.9.0 (libjpeg-turbo; fastdct=False, fastupsample=False)",
}  # pipeline.views.jpeg_decode.DECODERS
CROP_FLIP_NAMES = ("crop_top", "crop_left", "crop_height", "crop_width", "flip")
MIX_FIELDS = ("mixup_alpha", "cutmix_alpha", "mix_prob", "mix_switch_prob")
_CROP_TRIES = 10
_FLIP_DRAW = 4 * _CROP_TRIES

PARAM_MEANING = {
    "crop_top": "top edge of the crop, fraction of the source height",
    "crop_left": "left edge of the crop, fraction of the source width",
    "crop_height": "crop height, fraction of the source height",
    "crop_width": "crop width, fraction of the source width",
    "flip": "1 = the crop is mirrored left-right",
    "ra<i>_op": "RandAugment layer i: index into plan.randaugment_ops, -1 = not applied",
    "ra<i>_magnitude": "RandAugment layer i: timm magnitude level after noise and clipping",
    "ra<i>_arg": "RandAugment layer i: argument given to the timm op (signed)",
    "jitter_brightness": "torchvision adjust_brightness factor (1 = unchanged)",
    "jitter_contrast": "torchvision adjust_contrast factor (1 = unchanged)",
    "jitter_saturation": "torchvision adjust_saturation factor (1 = unchanged)",
    "jitter_hue": "torchvision adjust_hue shift (0 = unchanged)",
    "jitter_order": "index into itertools.permutations((brightness, contrast, saturation, hue))",
    "erase_top": "erased box top, fraction of the view",
    "erase_left": "erased box left, fraction of the view",
    "erase_height": "erased box height, fraction of the view (0 = no erasing)",
    "erase_width": "erased box width, fraction of the view",
    "erase_seed": "torch.Generator seed of the fill noise (modes rand, pixel)",
    "mix_mode": "0 none, 1 Mixup, 2 CutMix",
    "mix_partner": "partner's position in the same shard (row id - first row id of the shard)",
    "mix_lam": "weight of this sample's own image (CutMix: 1 - box area)",
    "mix_top": "CutMix box top, fraction of the view (pasted from the partner)",
    "mix_left": "CutMix box left, fraction of the view",
    "mix_height": "CutMix box height, fraction of the view",
    "mix_width": "CutMix box width, fraction of the view",
}


def _meaning(name: str) -> str:
    """A column's meaning; RandAugment columns ``ra<i>_*`` name their layer."""
    if name in PARAM_MEANING:
        return PARAM_MEANING[name]
    layer, part = name[2:].split("_", 1)
    return PARAM_MEANING[f"ra<i>_{part}"].replace("layer i", f"layer {layer}")


@dataclass(frozen=True)
class ViewPlan:
    """How the V views of every sample are drawn; stored in the cache's attrs."""

    seed: int = option(0, flag="--plan-seed", help="seed of the view plan")
    views: int = option(4, help="views V planned per sample")
    crop_scale: tuple[float, float] = option(
        (0.25, 1.0), metavar=("LOW", "HIGH"), help="RandomResizedCrop area scale range"
    )
    crop_ratio: tuple[float, float] = option(
        (3 / 4, 4 / 3), metavar=("LOW", "HIGH"), help="RandomResizedCrop aspect-ratio range"
    )
    flip_prob: float = option(0.5, help="probability of a left-right flip")
    randaugment: str = option(
        "", help="timm RandAugment string, e.g. rand-m9-mstd0.5-inc1; '' = off"
    )
    color_jitter: tuple[float, float, float, float] = option(
        (0.0, 0.0, 0.0, 0.0),
        metavar=("B", "C", "S", "H"),
        help="colour jitter strengths: brightness, contrast, saturation, hue",
    )
    erase_prob: float = option(0.0, help="random erasing probability")
    erase_mode: str = option("const", choices=ERASE_MODES, help="random erasing fill")
    mixup_alpha: float = option(0.0, help="Mixup Beta(alpha, alpha); 0 = off")
    cutmix_alpha: float = option(0.0, help="CutMix Beta(alpha, alpha); 0 = off")
    mix_prob: float = option(1.0, help="probability that a view is mixed")
    mix_switch_prob: float = option(
        0.5, help="with both on, probability of CutMix rather than Mixup"
    )
    renderer: str = option(
        DEFAULT_RENDERER,
        help="view renderer: cpu (= cpu/4), cuda (= device/1), cpu/3, cpu/2, or cpu/1, the renderer "
        "of caches made before renderers had versions",
    )

    def __post_init__(self):
        object.__setattr__(self, "renderer", RENDERER_ALIASES.get(self.renderer, self.renderer))
        if self.renderer not in RENDERERS:
            raise ConfigError(
                f"plan.renderer: {self.renderer!r} is not a renderer of this kdcache, which "
                f"renders with {DEFAULT_RENDERER!r} and replays {', '.join(RENDERERS)} "
                "(a cache from another kdcache version: replay it there, or re-teach it)",
                field="plan.renderer",
            )
        if self.views < 1:
            raise ConfigError(
                f"plan: views must be at least 1, got {self.views}", field="plan.views"
            )
        low, high = self.crop_scale
        if not 0 < low <= high <= 1:
            raise ConfigError(
                f"plan: crop_scale must satisfy 0 < low <= high <= 1, got {low, high}",
                field="plan.crop_scale",
            )
        if not 0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise ConfigError(
                f"plan: crop_ratio must satisfy 0 < low <= high, got {self.crop_ratio}",
                field="plan.crop_ratio",
            )
        for name in ("flip_prob", "erase_prob", "mix_prob", "mix_switch_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(
                    f"plan: {name} must lie in [0, 1], got {getattr(self, name)}",
                    field=f"plan.{name}",
                )
        if len(self.color_jitter) != 4 or min(self.color_jitter) < 0 or self.color_jitter[3] > 0.5:
            raise ConfigError(
                "plan: color_jitter must be 4 values (brightness, contrast, saturation, hue) "
                f">= 0 with hue <= 0.5, got {self.color_jitter}",
                field="plan.color_jitter",
            )
        if self.erase_mode not in ERASE_MODES:
            raise ConfigError(
                f"plan: erase_mode must be one of {ERASE_MODES}, got {self.erase_mode!r}",
                field="plan.erase_mode",
            )
        if self.mixup_alpha < 0 or self.cutmix_alpha < 0:
            raise ConfigError(
                f"plan: mixup_alpha and cutmix_alpha must be >= 0, got "
                f"{self.mixup_alpha} and {self.cutmix_alpha}",
                field="plan.mixup_alpha" if self.mixup_alpha < 0 else "plan.cutmix_alpha",
            )
        if self.randaugment:
            parse_randaugment(self.randaugment)

    @property
    def mixes(self) -> bool:
        """Whether views mix two images (Mixup or CutMix)."""
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0

    @property
    def operations(self) -> list[str]:
        """The enabled operations, in the order a view is rendered."""
        enabled = {
            "random_resized_crop": True,
            "hflip": self.flip_prob > 0,
            "randaugment": bool(self.randaugment),
            "color_jitter": any(self.color_jitter),
            "random_erasing": self.erase_prob > 0,
            "mixup": self.mixup_alpha > 0,
            "cutmix": self.cutmix_alpha > 0,
        }
        return [name for name, on in enabled.items() if on]

    @property
    def param_names(self) -> tuple[str, ...]:
        """The params columns of this plan, in order."""
        names = list(CROP_FLIP_NAMES)
        if self.randaugment:
            names += randaugment_columns(self.randaugment)
        if any(self.color_jitter):
            names += JITTER_COLUMNS
        if self.erase_prob > 0:
            names += ERASE_COLUMNS
        if self.mixes:
            names += MIX_COLUMNS
        return tuple(names)

    def to_attrs(self) -> dict:
        """JSON form for the cache attrs: fields, operations, layout, column names and meanings."""
        names = self.param_names
        meaning = {name: _meaning(name) for name in names}
        attrs = {
            **{k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()},
            "operations": self.operations,
            "params_layout": PARAMS_LAYOUT,
            "param_names": list(names),
            "param_meaning": meaning,
        }
        if self.randaugment:
            attrs["randaugment_ops"] = [op.name for op in parse_randaugment(self.randaugment).ops]
        if self.renderer in RENDERER_DECODERS:
            attrs["decoder"] = RENDERER_DECODERS[self.renderer]
        return attrs

    @classmethod
    def from_attrs(cls, attrs: dict) -> "ViewPlan":
        """Inverse of :meth:`to_attrs`; refuses a params layout this code cannot replay."""
        if attrs.get("params_layout") != PARAMS_LAYOUT:
            raise CacheMismatch(
                f"plan: params_layout is {attrs.get('params_layout')!r}, "
                f"this kdcache replays {PARAMS_LAYOUT!r} (re-teach the cache)"
            )
        values = {f.name: attrs[f.name] for f in fields(cls) if f.name != "renderer"}
        values["renderer"] = attrs.get("renderer", LEGACY_RENDERER)
        plan = cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
        decoder = RENDERER_DECODERS.get(plan.renderer)
        if attrs.get("decoder", decoder) != decoder:
            raise CacheMismatch(
                f"plan.decoder: {attrs['decoder']!r} made this {plan.renderer} cache, this "
                f"kdcache's {plan.renderer} decodes with {decoder!r} (replay it there, or re-teach it)"
            )
        if list(plan.param_names) != list(attrs["param_names"]):
            raise CacheMismatch(
                f"plan: param_names {attrs['param_names']} do not match the plan's "
                f"{list(plan.param_names)}"
            )
        return plan

    def differences(self, other: "ViewPlan") -> list[str]:
        """``plan.<field>: <self> vs <other>`` for every field that differs."""
        return [
            f"plan.{f.name}: {getattr(self, f.name)!r} vs {getattr(other, f.name)!r}"
            for f in fields(self)
            if getattr(self, f.name) != getattr(other, f.name)
        ]

    def params(
        self,
        rows: np.ndarray,
        aspect: np.ndarray,
        views=None,
        *,
        shard_size: int | None = None,
        shard_rows: np.ndarray | int | None = None,
    ) -> np.ndarray:
        """Params of ``views`` (default all) for each of ``rows``: float32 (len(rows), V, P).

        ``aspect`` is each row's source height / width. Mixing plans also need the shard
        layout: ``shard_size`` (row id = shard * shard_size + position) and ``shard_rows``,
        the number of rows in each row's shard (partners are drawn among those).
        """
        rows = np.asarray(rows, dtype=np.int64)[:, None]
        views = np.arange(self.views) if views is None else np.asarray(views)
        views = views.astype(np.int64)[None, :]
        columns = self._crop_flip(rows, views, np.asarray(aspect, dtype=np.float64)[:, None])
        if self.randaugment:
            columns.update(randaugment_params(self.randaugment, self.seed, rows, views))
        if any(self.color_jitter):
            columns.update(jitter_params(self.seed, rows, views, self.color_jitter))
        if self.erase_prob > 0:
            columns.update(erase_params(self.seed, rows, views, self.erase_prob))
        if self.mixes:
            if shard_size is None or shard_rows is None:
                raise ConfigError(
                    "plan: a mixing plan needs shard_size and shard_rows for partners"
                )
            counts = np.broadcast_to(np.asarray(shard_rows, dtype=np.int64), rows.shape[:1])
            columns.update(mix_params(self, rows, views, rows % shard_size, counts[:, None]))
        shape = np.broadcast(rows, views).shape
        return np.stack(
            [np.broadcast_to(columns[name], shape) for name in self.param_names], axis=-1
        ).astype(np.float32)

    def _crop_flip(self, rows, views, aspect) -> dict[str, np.ndarray]:
        shape = np.broadcast(rows, views).shape
        height, width = np.full(shape, np.nan), np.full(shape, np.nan)
        top, left = np.zeros(shape), np.zeros(shape)
        log_low, log_high = math.log(self.crop_ratio[0]), math.log(self.crop_ratio[1])
        for attempt in range(_CROP_TRIES):
            draws = [uniform(self.seed, rows, views, 4 * attempt + i) for i in range(4)]
            area = self.crop_scale[0] + draws[0] * (self.crop_scale[1] - self.crop_scale[0])
            ratio = np.exp(log_low + draws[1] * (log_high - log_low))
            w = np.sqrt(area * ratio * aspect)
            h = np.sqrt(area / (ratio * aspect))
            take = np.isnan(height) & (w <= 1) & (h <= 1)
            height[take], width[take] = h[take], w[take]
            top[take] = (draws[2] * (1 - h))[take]
            left[take] = (draws[3] * (1 - w))[take]
        fallback = np.isnan(height)
        if fallback.any():
            source_ratio = np.broadcast_to(1 / aspect, shape)
            w = np.where(source_ratio > self.crop_ratio[1], self.crop_ratio[1] * aspect, 1.0)
            h = np.where(source_ratio < self.crop_ratio[0], 1 / (self.crop_ratio[0] * aspect), 1.0)
            w, h = np.broadcast_to(w, shape), np.broadcast_to(h, shape)
            height[fallback], width[fallback] = h[fallback], w[fallback]
            top[fallback], left[fallback] = ((1 - h) / 2)[fallback], ((1 - w) / 2)[fallback]
        flip = uniform(self.seed, rows, views, _FLIP_DRAW) < self.flip_prob
        return dict(zip(CROP_FLIP_NAMES, (top, left, height, width, flip), strict=True))

    def shard_params(self, manifest: "Manifest", shard: "ShardInfo", views=None) -> np.ndarray:
        """Params of ``views`` (default all) of every row of a shard: float32 (n, V, P)."""
        rows = manifest.shard_rows(shard)
        return self.params(
            rows, manifest.aspect[rows], views,
            shard_size=manifest.shard_size, shard_rows=shard.num_rows,
        )  # fmt: skip
