"""RandAugment with timm's op set and magnitude semantics, planned per view and replayed.

timm's ``RandAugment`` draws its choices from the global ``random``/``numpy`` state and
exposes none of them. kdcache parses the same config string with timm
(``rand_augment_transform``, e.g. ``rand-m9-mstd0.5-inc1``), then draws every choice itself,
per (seed, row, view): for each of the ``n`` layers the op (uniform with replacement, or
weighted without replacement for weighted sets, as timm), whether it applies (probability
``p``), the magnitude (``gauss(m, mstd)``, or uniform on [0, m] for ``mstd`` > 100, clipped
to [0, mmax or 10]) and timm's level-to-argument mapping with its random sign (the level
function runs with Python's ``random`` seeded from a planned integer). Columns per layer:
``ra<i>_op`` (index into ``plan.randaugment_ops``, -1 = not applied), ``ra<i>_magnitude``,
``ra<i>_arg`` (the argument passed to timm's op; unused by argument-free ops).

Replay calls timm's op functions (``timm.data.auto_augment.NAME_TO_OP``) with the recorded
argument on the view quantised to uint8 (PIL, as timm's pipeline has it at this point),
bilinear resampling and a grey fill of 128 (fixed, so teacher and student agree whatever their
normalisation); the result returns to float32 on [0, 1]. Translations are relative to the view
(``TranslateXRel``), rotations and shears are in degrees and factors: one plan serves every
resolution.
"""

import random
from functools import lru_cache

import numpy as np
import torch
from PIL import Image
from timm.data import auto_augment

from kdcache.pipeline.views.draws import integer_seed, normal, uniform

_HPARAMS = {"img_mean": (128, 128, 128), "interpolation": Image.Resampling.BILINEAR}
_CHOICE_DRAW = 50  # 50..99: one per layer (uniform choice) or one per op (weighted)
_LAYER_DRAW = 100  # 100 + 4 * layer + (gate, magnitude, magnitude, sign)
MAX_LAYERS = 25


@lru_cache(maxsize=16)
def parse_randaugment(config: str) -> auto_augment.RandAugment:
    """timm's RandAugment for a config string; a clear error for a bad one."""
    try:
        augment = auto_augment.rand_augment_transform(config, dict(_HPARAMS))
    except (AssertionError, KeyError, ValueError) as error:
        raise ValueError(
            f"plan.randaugment: {config!r} is not a timm RandAugment string "
            "such as 'rand-m9-mstd0.5-inc1'"
        ) from error
    if not 1 <= augment.num_layers <= MAX_LAYERS:
        raise ValueError(
            f"plan.randaugment: {config!r} has {augment.num_layers} layers, expected 1..{MAX_LAYERS}"
        )
    return augment


def randaugment_columns(config: str) -> tuple[str, ...]:
    """Params column names for a config: op, magnitude and argument of every layer."""
    layers = parse_randaugment(config).num_layers
    return tuple(f"ra{i}_{part}" for i in range(layers) for part in ("op", "magnitude", "arg"))


def _choices(augment, seed: int, rows, views) -> np.ndarray:
    """(..., layers) op indices as timm picks them."""
    count, layers = len(augment.ops), augment.num_layers
    if augment.choice_weights is None:
        picks = [uniform(seed, rows, views, _CHOICE_DRAW + i) for i in range(layers)]
        return np.minimum((np.stack(picks, -1) * count).astype(np.int64), count - 1)
    # weighted sampling without replacement: the `layers` smallest exponential keys -log(u)/w
    keys = np.stack(
        [-np.log1p(-uniform(seed, rows, views, _CHOICE_DRAW + j)) / w
         for j, w in enumerate(augment.choice_weights)], -1,
    )  # fmt: skip
    return np.argsort(keys, axis=-1, kind="stable")[..., :layers]


def _level_argument(op: auto_augment.AugmentOp, magnitude: float, sign_seed: int) -> float:
    """timm's level-to-argument value, its random sign drawn from Python's ``random`` seeded
    with ``sign_seed`` (the global state is restored afterwards)."""
    if op.level_fn is None:
        return 0.0
    state = random.getstate()
    random.seed(sign_seed)
    try:
        (argument,) = op.level_fn(magnitude, op.hparams)
    finally:
        random.setstate(state)
    return float(argument)


def randaugment_params(config: str, seed: int, rows, views) -> dict[str, np.ndarray]:
    """RandAugment columns (see the module docstring) for every (row, view)."""
    augment = parse_randaugment(config)
    shape = np.broadcast(rows, views).shape
    chosen = _choices(augment, seed, rows, views)
    columns = {}
    for layer in range(augment.num_layers):
        draw = _LAYER_DRAW + 4 * layer
        op_index = chosen[..., layer].copy()
        applies = np.array([augment.ops[i].prob for i in op_index.ravel()]).reshape(shape)
        op_index[uniform(seed, rows, views, draw) > applies] = -1
        magnitude, argument = np.zeros(shape), np.zeros(shape)
        sign_seeds = integer_seed(seed, rows, views, draw + 3)
        std_normal = normal(seed, rows, views, draw + 1)
        spread = uniform(seed, rows, views, draw + 1)
        for position in zip(*np.nonzero(op_index >= 0), strict=True):
            op = augment.ops[op_index[position]]
            level = op.magnitude
            if op.magnitude_std == float("inf"):
                level = spread[position] * level
            elif op.magnitude_std > 0:
                level = level + op.magnitude_std * std_normal[position]
            level = max(0.0, min(level, op.magnitude_max or auto_augment._LEVEL_DENOM))
            magnitude[position] = level
            argument[position] = _level_argument(op, level, int(sign_seeds[position]))
        columns[f"ra{layer}_op"] = op_index
        columns[f"ra{layer}_magnitude"] = magnitude
        columns[f"ra{layer}_arg"] = argument
    return columns


def _applied(values: dict[str, float], config: str) -> list[tuple[int, float]]:
    """(op index, recorded argument) of every layer that applies, in order."""
    layers = parse_randaugment(config).num_layers
    return [(int(values[f"ra{i}_op"]), values[f"ra{i}_arg"])
            for i in range(layers) if values[f"ra{i}_op"] >= 0]  # fmt: skip


def randaugment_image(image: Image.Image, values: dict[str, float], config: str) -> Image.Image:
    """A uint8 PIL view (mode L or RGB) after its recorded RandAugment ops."""
    augment = parse_randaugment(config)
    fill = 128 if image.mode == "L" else (128, 128, 128)
    for op_index, argument in _applied(values, config):
        op = augment.ops[op_index]
        args = () if op.level_fn is None else (_op_argument(op.name, argument),)
        if op.name.startswith("Posterize") and args[0] == 0:
            # keeping 0 bits (PosterizeIncreasing at magnitude 10): Pillow >= 11 refuses it,
            # older Pillow (and so timm's semantics) gave an all-zero image
            image = Image.new(image.mode, image.size, 0)
            continue
        image = op.aug_fn(image, *args, fillcolor=fill, resample=Image.Resampling.BILINEAR)
    return image


def apply_randaugment(view: torch.Tensor, values: dict[str, float], config: str) -> torch.Tensor:
    """The float view after its recorded RandAugment ops (unchanged if none applies): quantised
    to uint8 for timm's PIL ops, back to float32 on [0, 1] (renderer cpu/1)."""
    if not _applied(values, config):
        return view
    channels = view.shape[0]
    pixels = (view * 255).round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    image = Image.fromarray(pixels[:, :, 0] if channels == 1 else pixels)
    out = torch.from_numpy(np.asarray(randaugment_image(image, values, config)).copy())
    out = out[None] if channels == 1 else out.permute(2, 0, 1)
    return out.to(torch.float32) / 255.0


def _op_argument(name: str, argument: float) -> float | int:
    """Posterize bits and solarize thresholds are integers in timm; the rest are floats."""
    return int(round(argument)) if name.startswith(("Posterize", "Solarize")) else argument
