"""Figures gathered shard by shard in memory that does not grow with the cache: running sums
and a reservoir sample for quantiles (inspect reads one shard at a time)."""

import itertools

import numpy as np

RESERVOIR = 1 << 20  # values kept for quantiles: exact below this many, a uniform sample above


class Reservoir:
    """A uniform sample of at most ``size`` of the values added (algorithm R, vectorised),
    with their exact count and mean."""

    def __init__(self, size: int = RESERVOIR, seed: int = 0):
        self.size, self.seen, self.total = size, 0, 0.0
        self.values = np.empty(0, np.float64)
        self._rng = np.random.default_rng(seed)

    def add(self, values: np.ndarray) -> None:
        values = np.asarray(values, np.float64).ravel()
        self.total += float(values.sum())
        room = max(self.size - len(self.values), 0)
        self.values = np.concatenate([self.values, values[:room]])
        rest = values[room:]
        if len(rest):
            index = np.arange(self.seen + room, self.seen + len(values))
            taken = self._rng.random(len(rest)) < self.size / (index + 1)
            slots = self._rng.integers(0, self.size, int(taken.sum()))
            self.values[slots] = rest[taken]  # in order: a later value wins a slot, as in R
        self.seen += len(values)

    def quantiles(self, complement: bool = False) -> dict[str, float]:
        """Mean (exact), 5th, 50th and 95th percentiles (of the sample) of the values, or with
        ``complement`` of 1 minus them; {} when empty."""
        if not self.seen:
            return {}
        values, mean = self.values, self.total / self.seen
        if complement:
            values, mean = 1 - values, 1 - mean
        p05, p50, p95 = np.quantile(values, [0.05, 0.5, 0.95])
        return {"mean": float(mean), "p05": float(p05), "p50": float(p50), "p95": float(p95)}


class TeacherFigures:
    """One teacher's accuracy, agreement between views and top-k mass, summed over the
    complete shards added."""

    def __init__(self, views: int):
        self.views, self.rows, self.shards = views, 0, 0
        self.correct = np.zeros(views, np.int64)
        self.pairs = {p: 0 for p in itertools.combinations(range(views), 2)}
        self.mass = Reservoir()

    def add(self, labels: np.ndarray, index: np.ndarray, logits: np.ndarray, lse: np.ndarray):
        """A complete shard's labels (n,), top-k ids and logits (n, V, K), logsumexp (n, V)."""
        top1 = index[..., 0]
        self.correct += (top1 == labels[:, None]).sum(0)
        for a, b in self.pairs:
            self.pairs[a, b] += int((top1[:, a] == top1[:, b]).sum())
        self.mass.add(np.exp(logits.astype(np.float64) - lse[..., None]).sum(-1))
        self.rows += len(labels)
        self.shards += 1

    def report(self) -> dict:
        """The figures as inspect reports them (None or empty without complete shards)."""
        rows = self.rows
        return {
            "shards_done": self.shards,
            "accuracy": float(self.correct.sum() * 100 / (rows * self.views)) if rows else None,
            "accuracy_per_view": [float(c * 100 / rows) for c in self.correct] if rows else [],
            "view_agreement": {
                f"{a}-{b}": (n / rows if rows else None) for (a, b), n in self.pairs.items()
            },  # fmt: skip
            "topk_mass": self.mass.quantiles(),
            "tail_mass": self.mass.quantiles(complement=True),
        }


class PairAgreement:
    """Top-1 agreement of each pair of teachers over the rows of shards complete for both."""

    def __init__(self, teachers: list[str]):
        self.counts = {pair: [0, 0] for pair in itertools.combinations(teachers, 2)}

    def add(self, top1: dict[str, np.ndarray]) -> None:
        """One shard's top-1 ids (n, V) of the teachers complete on it."""
        for (a, b), count in self.counts.items():
            if a in top1 and b in top1:
                count[0] += int((top1[a] == top1[b]).sum())
                count[1] += top1[a].size

    def report(self) -> dict[str, float]:
        return {f"{a}|{b}": same / n for (a, b), (same, n) in self.counts.items() if n}
