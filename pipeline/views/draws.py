"""Counter-based random numbers: every draw is a pure function of (seed, row, view, draw).

SplitMix64 chained over the seed, the row id, the view index and a draw number gives one
uniform number per (row, view) pair, so any view of any row is computed alone, in any order,
on any machine, by a few lines of numpy. Each operation of the plan owns a fixed range of
draw numbers (see the modules that use them), so enabling one operation never changes the
numbers another one draws.
"""

import math

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
GAMMA_TRIES = 16
GAMMA_DRAWS = 3 * GAMMA_TRIES + 1  # draw numbers one gamma variate uses


def _splitmix64(x: np.ndarray) -> np.ndarray:
    z = x + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def uniform(seed: int, rows: np.ndarray, views: np.ndarray, draw: int) -> np.ndarray:
    """Uniform [0, 1) numbers, one per (row, view) pair, pure in (seed, row, view, draw)."""
    with np.errstate(over="ignore"):
        state = _splitmix64(np.full(np.broadcast(rows, views).shape, seed, dtype=np.uint64))
        for part in (rows, views, np.full_like(rows, draw)):
            state = _splitmix64(state ^ np.asarray(part).astype(np.uint64))
    return (state >> np.uint64(11)).astype(np.float64) * 2.0**-53


def normal(seed: int, rows: np.ndarray, views: np.ndarray, draw: int) -> np.ndarray:
    """Standard normal numbers (Box-Muller over draws ``draw`` and ``draw + 1``)."""
    radius = np.sqrt(-2.0 * np.log1p(-uniform(seed, rows, views, draw)))
    return radius * np.cos(2.0 * math.pi * uniform(seed, rows, views, draw + 1))


def gamma(seed: int, rows: np.ndarray, views: np.ndarray, draw: int, shape: float) -> np.ndarray:
    """Gamma(shape, 1) numbers by Marsaglia-Tsang with up to 16 tries (draws ``draw`` to
    ``draw + GAMMA_DRAWS - 1``); a value never accepted (odds below 1e-20) takes the mode.
    Shapes below 1 use Gamma(shape + 1) * U ** (1 / shape)."""
    boosted = shape < 1
    d = (shape + 1 if boosted else shape) - 1 / 3
    c = 1 / math.sqrt(9 * d)
    result = np.full(np.broadcast(rows, views).shape, np.nan)
    for attempt in range(GAMMA_TRIES):
        x = normal(seed, rows, views, draw + 3 * attempt)
        u = uniform(seed, rows, views, draw + 3 * attempt + 2)
        v = (1 + c * x) ** 3
        with np.errstate(invalid="ignore", divide="ignore"):
            accept = (v > 0) & (np.log(u) < 0.5 * x * x + d - d * v + d * np.log(v))
        take = np.isnan(result) & accept
        result[take] = (d * v)[take]
    result[np.isnan(result)] = d
    if boosted:
        result *= uniform(seed, rows, views, draw + 3 * GAMMA_TRIES) ** (1 / shape)
    return result


def beta(seed: int, rows: np.ndarray, views: np.ndarray, draw: int, alpha: float) -> np.ndarray:
    """Beta(alpha, alpha) numbers from two gamma variates (draws ``draw`` to
    ``draw + 2 * GAMMA_DRAWS - 1``)."""
    first = gamma(seed, rows, views, draw, alpha)
    second = gamma(seed, rows, views, draw + GAMMA_DRAWS, alpha)
    return first / (first + second)


def integer_seed(seed: int, rows: np.ndarray, views: np.ndarray, draw: int) -> np.ndarray:
    """Integers in [0, 2**24): exact in a float32 params column, used to seed noise."""
    return np.floor(uniform(seed, rows, views, draw) * 2**24)
