"""Which of its V cached views a sample is shown in each of E student epochs (E may differ
from V). Recorded in the run's config.json as ``view_schedule``.

* ``cycle``: epoch e shows view ``e mod V`` to every sample (all samples move together).
* ``shuffle``: each sample walks through its own random permutation of the V views, a new
  permutation every V epochs (random without replacement per sample): every view is shown
  once per V epochs, samples in different views within an epoch. The permutation of row n in
  round r = e div V is the argsort of V counter-based uniforms keyed by (seed, n, r), so any
  worker computes any sample's view alone.
"""

from dataclasses import dataclass

import numpy as np

from kdcache.errors import ConfigError
from kdcache.pipeline.views import uniform

SCHEDULES = ("cycle", "shuffle")
_SCHEDULE_DRAW = 1000  # above every draw number the plan uses


@dataclass(frozen=True)
class ViewSchedule:
    """The epoch -> view mapping of a run."""

    kind: str
    views: int
    seed: int = 0

    def __post_init__(self):
        if self.kind not in SCHEDULES:
            raise ConfigError(
                f"view_schedule: must be one of {SCHEDULES}, got {self.kind!r}",
                field="view_schedule",
            )

    def views_for(self, epoch: int, rows: np.ndarray) -> np.ndarray:
        """The view index (int64) each of ``rows`` is shown in ``epoch``."""
        rows = np.asarray(rows, dtype=np.int64)
        if self.kind == "cycle":
            return np.full(rows.shape, epoch % self.views, dtype=np.int64)
        round_index = np.full(rows.shape, epoch // self.views, dtype=np.int64)
        keys = np.stack(
            [uniform(self.seed, rows, round_index, _SCHEDULE_DRAW + j) for j in range(self.views)],
            axis=-1,
        )
        return np.argsort(keys, axis=-1, kind="stable")[:, epoch % self.views]
