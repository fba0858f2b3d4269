"""``teach --dry-run``: the size of the cache a teach config would make, running no teacher."""

from kdcache.pipeline.cache import CachePlan, format_size, size_plan
from kdcache.pipeline.data import Manifest
from kdcache.pipeline.teach.teach_config import TeachConfig


def dry_run_report(config: TeachConfig) -> str:
    """The objects, bytes and read requests/s of the cache ``config`` makes (resolved against
    an existing cache as teach would be). Feature or attention targets load the first teacher
    for one forward of a zero image: their shapes."""
    manifest = Manifest.read(config.manifest, allow_remote_shards=config.allow_remote_shards)
    config = config.resolve(manifest.num_classes)
    features = ()
    if config.features or config.attention:
        from kdcache.pipeline.teach.feature_taps import teacher_identity

        features = tuple(teacher_identity(config.teachers[0], manifest, config)["features"])
    plan = CachePlan(
        shards=len(manifest.shards_of(config.splits)),
        shard_size=manifest.shard_size,
        num_classes=manifest.num_classes,
        views=config.plan.views,
        topk=config.topk,
        params=len(config.plan.param_names),
        teachers=len(config.teachers),
        samples=config.samples,
        target_dtype=config.target_dtype,
        student_rate=config.student_rate,
        features=features,
    )
    return format_size(plan, size_plan(plan))
