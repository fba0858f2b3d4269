"""RandAugment with timm's op set and magnitude semantics, planned per view (replayed by
``pixel_ops``; timm is imported when a plan enables RandAugment).

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
from typing import TYPE_CHECKING

import numpy as np

from kdcache.errors import ConfigError
from kdcache.pipeline.views.draws import integer_seed, normal, uniform

if TYPE_CHECKING:
    from timm.data.auto_augment import AugmentOp, RandAugment

_CHOICE_DRAW = 50  # 50..99: one per layer (uniform choice) or one per op (weighted)
_LAYER_DRAW = 100  # 100 + 4 * layer + (gate, magnitude, magnitude, sign)
MAX_LAYERS = 25


@lru_cache(maxsize=16)
def parse_randaugment(config: str) -> "RandAugment":
    """timm's RandAugment for a config string; a clear error for a bad one."""
    from PIL import Image
    from timm.data import auto_augment

    hparams = {"img_mean": (128, 128, 128), "interpolation": Image.Resampling.BILINEAR}
    try:
        augment = auto_augment.rand_augment_transform(config, hparams)
    except (AssertionError, KeyError, ValueError) as error:
        raise ConfigError(
            f"plan.randaugment: {config!r} is not a timm RandAugment string "
            "such as 'rand-m9-mstd0.5-inc1'",
            field="plan.randaugment",
        ) from error
    if not 1 <= augment.num_layers <= MAX_LAYERS:
        raise ConfigError(
            f"plan.randaugment: {config!r} has {augment.num_layers} layers, expected 1..{MAX_LAYERS}",
            field="plan.randaugment",
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


def _level_argument(op: "AugmentOp", magnitude: float, sign_seed: int) -> float:
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
    from timm.data import auto_augment  # already imported by parse_randaugment

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
