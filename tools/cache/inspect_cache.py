"""``kdcache inspect``: what a cache holds, how complete it is, and how good its targets are."""

import itertools

import numpy as np

from kdcache.errors import CacheCorrupt
from kdcache.pipeline.cache import FORMAT, CacheStore
from kdcache.pipeline.cache.cache_manifest import manifest_for
from kdcache.pipeline.data import Manifest, storage, urls


def _quantiles(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {}
    p05, p50, p95 = np.quantile(values, [0.05, 0.5, 0.95])
    return {"mean": float(values.mean()), "p05": float(p05), "p50": float(p50), "p95": float(p95)}


def inspect_cache(
    location: str,
    data: str | None = None,
    storage_options: dict | None = None,
    allow_remote_shards: bool = False,
) -> dict:
    """Every figure of ``kdcache inspect`` as a dict (computed over complete shards only;
    agreement between two teachers over the shards complete for both); ``storage_options``
    (over ``$KDCACHE_STORAGE_OPTIONS``) reach URLs."""
    with storage.using(storage_options):
        return _inspect(location, data, allow_remote_shards)


def _inspect(location: str, data: str | None, allow_remote_shards: bool) -> dict:
    store = CacheStore.open(location)
    manifest: Manifest = manifest_for(store, data, allow_remote_shards)
    views = store.plan.views
    split_shards = manifest.shards_of(store.attrs["splits"])
    report = {
        "cache": location,
        "format": store.attrs["format"],
        "target_dtype": store.target_dtype,
        "dataset": store.attrs["dataset"]["name"],
        "fingerprint": store.attrs["dataset"]["fingerprint"],
        "splits": store.attrs["splits"],
        "views": views,
        "topk": store.topk,
        "samples": store.samples,
        "identity_hash": "checked" if store.identity_hashed else "absent (made before it existed)",
        "teachers": {},
    }
    top1: dict[str, dict[int, np.ndarray]] = {}  # per teacher, per complete shard: (n, views)
    raw_bytes, rows_total = 0, sum(s.num_rows for s in split_shards)
    for name in store.teacher_names:
        done = store.shard_done(name)
        problems, read = _region_problems(store, name, split_shards)
        complete, blocks = [s for s, _ in read], [b for _, b in read]
        figures = _teacher_figures(store, manifest, name, complete, blocks)
        missing = [s.file for s in split_shards if not done[s.id]]
        report["teachers"][name] = {
            **figures,
            "shards_total": len(split_shards),
            "missing": missing,
            "problems": problems,
            "quantisation_kl": _quantisation_kl(store, name),
            "features": {t["name"]: t["shape"] for t in store.feature_targets(name)},
            "target_bytes_per_view": store.view_bytes(name) if store.format == FORMAT else None,
        }
        top1[name] = {s.id: b.topk_index[..., 0] for s, b in zip(complete, blocks, strict=True)}
        raw_bytes += sum(
            array.nbytes for b in blocks for a, array in b.arrays().items() if a != "params"
        )
    report["teacher_agreement"] = _teacher_agreement(top1)
    written = [
        s for s in split_shards if any(store.shard_done(n)[s.id] for n in store.teacher_names)
    ]
    params = len(store.plan.param_names) * views * np.dtype(np.float32).itemsize
    raw_bytes += sum(s.num_rows for s in written) * params
    disk = urls.disk_bytes(location)
    report["storage"] = {
        "bytes_on_disk": disk,
        "bytes_raw": raw_bytes,
        "bytes_per_view": disk / max(rows_total * views, 1),
        "compression_ratio": raw_bytes / disk if disk else None,
    }
    return report


def _quantisation_kl(store: CacheStore, name: str) -> float | None:
    """Mean KL(fp16 targets || stored q8/q6 targets) over a teacher's done regions, as measured
    when they were written; None for fp16 targets."""
    kl = store.quantisation_kl(name)
    if kl is None:
        return None
    done = store.views_done(name)
    return float(kl[done].mean()) if done.any() else None


def _region_problems(store: CacheStore, name: str, shards: list) -> tuple[list[dict], list]:
    """Every done (shard, view) region of a teacher checked (checksum, finite targets, data
    behind its done flag): the problems found, and (shard, the plan's views of its block) of
    each complete shard that could be read (for the figures), each shard read once."""
    done = store.views_done(name)
    problems, blocks = [], []
    for shard in shards:
        views = [int(v) for v in np.flatnonzero(done[shard.id])]
        if not views:
            continue
        try:
            block = store.read_shard(name, shard, views=store.array_views)
        except CacheCorrupt:  # a chunk cannot be read: find which, per view
            for view, problem in _unreadable(store, name, shard, views).items():
                problems.append({"shard": shard.file, "view": view, "problem": problem})
            continue
        for view, problem in store.region_problems(name, shard, block, views).items():
            problems.append({"shard": shard.file, "view": view, "problem": problem})
        if done[shard.id, : store.plan.views].all():
            blocks.append((shard, block.select(slice(None), slice(0, store.plan.views))))
    return problems, blocks


def _unreadable(store: CacheStore, name: str, shard, views: list[int]) -> dict[int, str]:
    """Per done view of a shard whose block cannot be read, what is wrong with its region."""
    found = {}
    for view in views:
        try:
            store.read_region(name, shard, view)
        except CacheCorrupt as error:
            found[view] = str(error).split(": ", 1)[-1]
    return found


def _teacher_figures(
    store: CacheStore, manifest: Manifest, name: str, complete: list, blocks: list
) -> dict:
    """One teacher's accuracy, agreement between views and top-k mass over ``complete`` shards."""
    views = store.plan.views
    labels = np.concatenate([manifest.labels[manifest.shard_rows(s)] for s in complete] or [[]])
    empty = np.zeros((0, views, 1))
    index = np.concatenate([b.topk_index for b in blocks]) if blocks else empty
    logits = np.concatenate([b.topk_logits for b in blocks]) if blocks else empty
    lse = np.concatenate([b.logsumexp for b in blocks]) if blocks else np.zeros((0, views))
    correct = index[..., 0] == labels[:, None]
    topk_mass = np.exp(logits.astype(np.float64) - lse[..., None]).sum(-1).ravel()
    pairs = {
        f"{a}-{b}": float((index[:, a, 0] == index[:, b, 0]).mean()) if len(index) else None
        for a, b in itertools.combinations(range(views), 2)
    }
    return {
        "arch": store.teacher_identity(name)["arch"],
        "shards_done": len(complete),
        "accuracy": float(correct.mean() * 100) if len(correct) else None,
        "accuracy_per_view": [float(c * 100) for c in correct.mean(0)] if len(correct) else [],
        "view_agreement": pairs,
        "topk_mass": _quantiles(topk_mass),
        "tail_mass": _quantiles(1 - topk_mass),
    }


def _teacher_agreement(top1: dict[str, dict[int, np.ndarray]]) -> dict[str, float]:
    """Top-1 agreement of each pair of teachers over the rows both have (the shards complete
    for both); a pair with no such rows is left out."""
    agreement = {}
    for a, b in itertools.combinations(top1, 2):
        shared = sorted(top1[a].keys() & top1[b].keys())
        if shared:
            same = np.concatenate([(top1[a][s] == top1[b][s]).ravel() for s in shared])
            agreement[f"{a}|{b}"] = float(same.mean())
    return agreement


def format_report(report: dict) -> str:
    """A human-readable summary of :func:`inspect_cache`."""
    bad = bad_regions(report)
    lines = [
        f"cache {report['cache']} ({report['format']}, {report['target_dtype']} targets): "
        f"{report['dataset']} "
        f"{report['fingerprint'][:12]}, splits {','.join(report['splits'])}, "
        f"{report['views']} views, top-{report['topk']}"
        + (f", {report['samples']} sampled ids" if report["samples"] else ""),
        f"{'teacher':<16}{'arch':<18}{'shards':>9}{'acc %':>8}  {'per view acc %':<28}"
        f"{'view agr':>9}{'tail p50':>10}{'tail p95':>10}",
    ]
    for name, t in report["teachers"].items():
        agreement = [v for v in t["view_agreement"].values() if v is not None]
        per_view = " ".join(f"{a:.1f}" for a in t["accuracy_per_view"])
        lines.append(
            f"{name:<16}{t['arch']:<18}{t['shards_done']:>4}/{t['shards_total']:<4}"
            f"{(t['accuracy'] or 0):>8.2f}  {per_view:<28}"
            f"{(np.mean(agreement) if agreement else 0):>9.3f}"
            f"{t['tail_mass'].get('p50', 0):>10.4f}{t['tail_mass'].get('p95', 0):>10.4f}"
        )
        if t["quantisation_kl"] is not None:
            lines.append(
                f"  quantisation: mean KL(fp16 targets || {report['target_dtype']} targets) "
                f"{t['quantisation_kl']:.3g} "
                "nats per view (measured as written)"
            )
        if t["missing"]:
            lines.append(
                f"  missing: {', '.join(t['missing'][:5])}{' ...' if len(t['missing']) > 5 else ''}"
            )
        for target, shape in t["features"].items():
            lines.append(f"  target {target}: shape {shape}")
        if t["target_bytes_per_view"]:
            parts = ", ".join(f"{k} {v:.1f}" for k, v in t["target_bytes_per_view"].items())
            lines.append(f"  stored bytes per view: {parts}")
        for p in t["problems"][:20]:
            lines.append(f"  BAD {p['shard']} view {p['view']}: {p['problem']}")
        if len(t["problems"]) > 20:
            lines.append(f"  ... {len(t['problems']) - 20} more bad regions")
    for pair, value in report["teacher_agreement"].items():
        lines.append(f"teacher agreement {pair}: {value:.3f}")
    s = report["storage"]
    ratio = f"{s['compression_ratio']:.2f}x" if s["compression_ratio"] else "-"
    lines.append(
        f"storage: {s['bytes_on_disk'] / 2**20:.2f} MiB on disk, {s['bytes_per_view']:.1f} bytes "
        f"per view, compression {ratio}"
    )
    lines.append(
        f"integrity: identity hash {report['identity_hash']}; "
        + (f"{bad} BAD regions (listed above)" if bad else "every done region checks out")
    )
    return "\n".join(lines)


def plot_report(report: dict, location: str) -> None:
    """Per-view accuracy and tail-mass quantiles per teacher, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for name, t in report["teachers"].items():
        left.plot(
            range(len(t["accuracy_per_view"])), t["accuracy_per_view"], marker="o", label=name
        )
        tail = t["tail_mass"]
        if tail:
            right.bar(
                name, tail["p50"], yerr=[[tail["p50"] - tail["p05"]], [tail["p95"] - tail["p50"]]]
            )
    left.set(
        xlabel="view", ylabel="top-1 accuracy vs labels (%)", title="teacher accuracy per view"
    )
    left.legend()
    right.set(
        ylabel="tail mass (1 - top-k probability)",
        title=f"tail mass, top-{report['topk']} (p5-p50-p95)",
    )
    figure.tight_layout()
    with storage.open_file(location, "wb") as f:
        figure.savefig(f, format="png", dpi=100)
    plt.close(figure)


def bad_regions(report: dict) -> int:
    """How many done regions :func:`inspect_cache` found bad, over every teacher."""
    return sum(len(t["problems"]) for t in report["teachers"].values())
