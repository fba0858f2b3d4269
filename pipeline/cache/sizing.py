"""What a ``kdcache/2`` cache of a plan will cost before any teacher runs (``teach --dry-run``):
storage objects and bytes per array, from the array specs the store creates (:mod:`layout`)."""

from dataclasses import dataclass

from kdcache.pipeline.cache.feature_layout import feature_specs, feature_view_bytes
from kdcache.pipeline.cache.layout import params_spec, plan_size, teacher_specs
from kdcache.pipeline.cache.target_block import index_dtype


@dataclass(frozen=True)
class CachePlan:
    """The numbers a cache's size depends on (``shards``: data shards of the cached splits;
    ``features``: a teacher's feature and attention target records, with their shapes)."""

    shards: int
    shard_size: int
    num_classes: int
    views: int
    topk: int
    params: int
    teachers: int = 1
    samples: int = 0
    target_dtype: str = "fp16"
    student_rate: float = 10000.0
    features: tuple[dict, ...] = ()


def size_plan(plan: CachePlan) -> dict:
    """Per array (``params`` and ``teacher/<array>``, one teacher's), objects and bytes; totals
    over every teacher; bytes per view; and the read requests/s of a student reading one view
    per shard (two ranged reads per array: the object's index, then the view's chunk)."""
    specs = teacher_specs(
        plan.target_dtype, plan.topk, plan.num_classes, plan.samples, index_dtype(plan.num_classes)
    )
    specs += feature_specs(list(plan.features), plan.target_dtype)
    arrays = {
        "params": plan_size([params_spec(plan.params)], plan.shards, plan.shard_size, plan.views)[
            "params"
        ],
        **{
            f"teacher/{name}": size
            for name, size in plan_size(specs, plan.shards, plan.shard_size, plan.views).items()
        },
    }
    per_teacher = sum(a["bytes"] for name, a in arrays.items() if name.startswith("teacher/"))
    total = arrays["params"]["bytes"] + plan.teachers * per_teacher
    rows_views = plan.shards * plan.shard_size * plan.views
    read_arrays = 1 + plan.teachers * sum(not s.ledger for s in specs)
    return {
        "arrays": arrays,
        "objects": arrays["params"]["objects"] + plan.teachers * plan.shards * len(specs),
        "bytes": total,
        "target_bytes_per_view": per_teacher / rows_views,
        "read_requests_per_s": plan.student_rate / plan.shard_size * read_arrays * 2,
        "feature_bytes_per_view": feature_view_bytes(
            list(plan.features), plan.target_dtype, plan.shard_size, plan.views
        ),
    }


def format_size(plan: CachePlan, size: dict) -> str:
    """``teach --dry-run``'s lines."""
    width = max(24, *(len(name) + 2 for name in size["arrays"]))
    lines = [
        f"dry run: format kdcache/2, {plan.target_dtype} targets, {plan.shards} shards of "
        f"{plan.shard_size} rows, {plan.views} views, top-{plan.topk}, {plan.teachers} teacher(s)",
        f"{'array':<{width}}{'objects':>10}{'bytes':>16}{'bytes/row-view':>16}",
    ]
    for name, array in size["arrays"].items():
        lines.append(
            f"{name:<{width}}{array['objects']:>10}{array['bytes']:>16}"
            f"{array['bytes_per_view']:>16.3f}"
        )
    for name, per_view in size["feature_bytes_per_view"].items():
        lines.append(f"target {name}: {per_view:.2f} bytes per view and teacher")
    lines.append(
        f"total: {size['objects']} objects, {size['bytes']} bytes "
        f"({size['bytes'] / 2**30:.3f} GiB), {size['target_bytes_per_view']:.2f} target bytes "
        f"per view and teacher; a student at {plan.student_rate:g} img/s issues "
        f"{size['read_requests_per_s']:.0f} read requests/s"
    )
    return "\n".join(lines)
