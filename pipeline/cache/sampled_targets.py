"""Sampled teacher targets (RS-KD, Anshumann et al. 2025): class ids drawn from the teacher.

Per view, S class ids are drawn with replacement from the teacher's softmax at temperature 1
by inverse CDF (float64) on uniform numbers that are a pure function of (plan seed, row, view,
draw j): a rerun, a resumed shard or ``kdcache verify`` draws the same ids from the same logits.
Draws are kept in draw order, so the first S' < S of them are themselves S' i.i.d. draws.
Their empirical distribution ``q(c) = #{j: id_j = c} / S`` has expectation the teacher's
softmax, which is what makes the sampled distillation loss unbiased (``trainer.sampled``).
"""

import numpy as np
import torch

from kdcache.pipeline.views import uniform

# Draw numbers of the samples start here, far above the plan's own draws (crop tries, flip),
# so a sample never reuses a number that shaped the view.
SAMPLE_DRAW_OFFSET = 1 << 32

SAMPLING_ATTRS = {
    "distribution": "softmax(teacher logits), temperature 1, fp32 logits",
    "replacement": True,
    "order": "draw order (any prefix is i.i.d. too)",
    "method": "inverse CDF in float64",
    "uniforms": "pipeline.plan.uniform(plan seed, row, view, 2**32 + j), j = 0..samples-1",
}


def sample_uniforms(seed: int, rows: np.ndarray, views: list[int], samples: int) -> np.ndarray:
    """Uniform [0, 1) numbers (len(rows), len(views), samples), pure in (seed, row, view, j)."""
    rows = np.asarray(rows, dtype=np.int64)[:, None]
    views = np.asarray(views, dtype=np.int64)[None, :]
    return np.stack(
        [uniform(seed, rows, views, SAMPLE_DRAW_OFFSET + j) for j in range(samples)], axis=-1
    )


def draw_classes(logits: torch.Tensor, uniforms: np.ndarray) -> np.ndarray:
    """Class ids (B, S) drawn from softmax(logits) (B, C) by inverse CDF on ``uniforms`` (B, S).

    A class of probability 0 is never drawn: each ``u`` is scaled by the CDF's total before
    the search, so rounding in the cumulative sum cannot push a draw past the last class.
    """
    cdf = torch.softmax(logits.detach().double().cpu(), dim=-1).cumsum(-1)
    scaled = torch.from_numpy(np.asarray(uniforms, dtype=np.float64)) * cdf[:, -1:]
    return torch.searchsorted(cdf, scaled, right=True).numpy()
