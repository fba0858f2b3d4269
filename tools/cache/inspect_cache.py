"""``kdcache inspect``: what a cache holds, how complete it is, and how good its targets are.

One pass over the shards asked for, one shard at a time: each teacher's ledger is read once,
each storage object of a shard once, and the figures are running sums and a reservoir sample
(:mod:`running_stats`), so memory does not grow with the cache."""

import numpy as np

from kdcache.errors import CacheCorrupt, ConfigError
from kdcache.pipeline.cache import FORMAT, CacheStore
from kdcache.pipeline.cache.cache_manifest import manifest_for
from kdcache.pipeline.data import Manifest, storage, urls
from kdcache.tools.cache.running_stats import PairAgreement, TeacherFigures


def inspect_cache(
    location: str,
    data: str | None = None,
    storage_options: dict | None = None,
    allow_remote_shards: bool = False,
    shards: str | None = None,
) -> dict:
    """Every figure of ``kdcache inspect`` as a dict (computed over complete shards only;
    agreement between two teachers over the shards complete for both); ``storage_options``
    (over ``$KDCACHE_STORAGE_OPTIONS``) reach URLs; ``shards`` (ids like ``0-9,12``) inspects
    only those shards of the cache's splits."""
    with storage.using(storage_options):
        return _inspect(location, data, allow_remote_shards, shards)


def shard_selection(text: str, count: int) -> set[int]:
    """Shard ids ``0-9,12`` (each within ``0..count-1``), without building a list of a range
    the text declares beyond the cache."""
    ids: set[int] = set()
    for part in text.split(","):
        low, _, high = part.strip().partition("-")
        if not low.isdigit() or (high and not high.isdigit()):
            raise ConfigError(f"shards: expected ids like 0-9,12, got {text!r}", field="shards")
        first, last = int(low), int(high or low)
        if not first <= last < count:
            raise ConfigError(
                f"shards: {part!r} is not within the cache's shard ids 0..{count - 1}",
                field="shards",
            )
        ids.update(range(first, last + 1))
    return ids


def _inspect(location: str, data: str | None, allow_remote_shards: bool, only: str | None) -> dict:
    store = CacheStore.open(location)
    manifest: Manifest = manifest_for(store, data, allow_remote_shards)
    split_shards = manifest.shards_of(store.attrs["splits"])
    if only is not None:
        wanted = shard_selection(only, len(manifest.shards))
        split_shards = [s for s in split_shards if s.id in wanted]
    names = store.teacher_names
    done = {name: store.views_done(name) for name in names}  # each ledger read once
    figures = {name: TeacherFigures(store.plan.views) for name in names}
    problems: dict[str, list[dict]] = {name: [] for name in names}
    agreement, raw_bytes = PairAgreement(names), 0
    for shard in split_shards:
        raw_bytes += _inspect_shard(store, manifest, shard, done, figures, problems, agreement)
    report = _header(store, location)
    for name in names:
        complete = done[name][:, : store.plan.views].all(axis=1)
        report["teachers"][name] = {
            "arch": store.teacher_identity(name)["arch"],
            **figures[name].report(),
            "shards_total": len(split_shards),
            "missing": [s.file for s in split_shards if not complete[s.id]],
            "problems": problems[name],
            "quantisation_kl": _quantisation_kl(store, name, done[name]),
            "features": {t["name"]: t["shape"] for t in store.feature_targets(name)},
            "target_bytes_per_view": store.view_bytes(name) if store.format == FORMAT else None,
        }
    report["teacher_agreement"] = agreement.report()
    report["storage"] = _storage(store, location, split_shards, done, raw_bytes)
    return report


def _header(store: CacheStore, location: str) -> dict:
    return {
        "cache": location,
        "format": store.attrs["format"],
        "target_dtype": store.target_dtype,
        "dataset": store.attrs["dataset"]["name"],
        "fingerprint": store.attrs["dataset"]["fingerprint"],
        "splits": store.attrs["splits"],
        "views": store.plan.views,
        "topk": store.topk,
        "samples": store.samples,
        "identity_hash": "checked" if store.identity_hashed else "absent (made before it existed)",
        "teachers": {},
    }


def _inspect_shard(store, manifest, shard, done, figures, problems, agreement) -> int:
    """Check every done region of one shard for every teacher (checksum, finite targets,
    data behind its done flag; an unreadable chunk is a bad region) and add the shard's
    complete teachers to the figures; returns the raw bytes of its targets read."""
    views, top1, raw = store.plan.views, {}, 0
    labels = None
    for name in store.teacher_names:
        done_views = [int(v) for v in np.flatnonzero(done[name][shard.id])]
        if not done_views:
            continue
        try:
            block = store.read_shard(name, shard, views=store.array_views)
        except CacheCorrupt:  # a chunk cannot be read: find which, per view
            found = _unreadable(store, name, shard, done_views)
        else:
            found = store.region_problems(name, shard, block, done_views)
        problems[name] += [{"shard": shard.file, "view": v, "problem": p} for v, p in found.items()]
        if found or not done[name][shard.id, :views].all():
            continue
        block = block.select(slice(None), slice(0, views))
        raw += sum(array.nbytes for a, array in block.arrays().items() if a != "params")
        if labels is None:
            labels = manifest.shard_labels(shard)
        figures[name].add(labels, block.topk_index, block.topk_logits, block.logsumexp)
        top1[name] = block.topk_index[..., 0]
    agreement.add(top1)
    return raw


def _storage(store: CacheStore, location: str, shards: list, done: dict, raw: int) -> dict:
    """Bytes on disk against the raw bytes of the targets and params read."""
    written = [s for s in shards if any(d[s.id].any() for d in done.values())]
    params = len(store.plan.param_names) * store.plan.views * np.dtype(np.float32).itemsize
    raw += sum(s.num_rows for s in written) * params
    disk = urls.disk_bytes(location)
    rows_total = sum(s.num_rows for s in shards)
    return {
        "bytes_on_disk": disk,
        "bytes_raw": raw,
        "bytes_per_view": disk / max(rows_total * store.plan.views, 1),
        "compression_ratio": raw / disk if disk else None,
    }


def _quantisation_kl(store: CacheStore, name: str, done: np.ndarray) -> float | None:
    """Mean KL(fp32 targets || stored q8/q6 targets) over a teacher's done regions, as measured
    when they were written; None for fp16 targets."""
    kl = store.quantisation_kl(name)
    if kl is None:
        return None
    return float(kl[done].mean()) if done.any() else None


def _unreadable(store: CacheStore, name: str, shard, views: list[int]) -> dict[int, str]:
    """Per done view of a shard whose block cannot be read, what is wrong with its region."""
    found = {}
    for view in views:
        try:
            store.read_region(name, shard, view)
        except CacheCorrupt as error:
            found[view] = str(error).split(": ", 1)[-1]
    return found


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
