"""kdcache: knowledge distillation with the teacher paid once.

Produce a cache once, then train any number of students from it:

- ``kdcache.shard(source, out)`` writes a dataset as WebDataset tars plus ``manifest.parquet``
  and returns its :class:`Manifest`;
- ``kdcache.index_webdataset(tars, out)`` (and ``index_parquet``) writes ``manifest.parquet``
  over existing WebDataset tars (or Parquet files) in place, without rewriting them;
- ``kdcache.teach(TeachConfig(...))`` runs the teachers over the planned views (a Ray job) and
  writes their top-k targets into a Zarr cache; returns a :class:`TeachSummary`;
- ``kdcache.open_cache(location)`` opens a cache read-only (:class:`Cache`: plan, teachers,
  completeness, the targets of any (row, view), ``verify()``);
- ``kdcache.KDLoader(data, cache)`` yields :class:`KDBatch` es — normalised images, labels and
  per-teacher :class:`Targets` of the views each sample is shown this epoch — for a training
  loop of your own (correct ``len()``, ``set_epoch``, no sample dropped under DDP);
- ``kdcache.DistillationLoss`` turns a student's outputs (one or two heads), labels and those
  targets into one loss tensor (its parts in ``.parts``);
- ``kdcache.KDTask`` is one training step with timm's ``TrainingTask`` contract (student,
  criterion, optional online teacher): ``task(x, y, targets)`` returns the loss and its parts;
- ``kdcache.evaluate_model(model, data, resolution=...)`` evaluates a model as the trainer does;
- ``kdcache.train(TrainConfig(...))`` is the trainer behind ``kdcache train``.

Errors are the types in :mod:`kdcache.errors` (all subclasses of ``KdcacheError``).
Names are imported on first use, so ``import kdcache`` is instant.
"""

from kdcache._lazy import lazy_face

__version__ = "0.1.0"

__getattr__, __dir__, __all__ = lazy_face(
    __name__,
    {
        "shard": "kdcache.pipeline.data.shard_writer:write_shards",
        "index_webdataset": "kdcache.pipeline.data.wds_index:index_webdataset",
        "index_parquet": "kdcache.pipeline.data.parquet_index:index_parquet",
        "IndexConfig": "kdcache.pipeline.data",
        "Manifest": "kdcache.pipeline.data",
        "ViewPlan": "kdcache.pipeline.views",
        "teach": "kdcache.pipeline.teach.job:run_teach",
        "TeachConfig": "kdcache.pipeline.teach",
        "TeacherSource": "kdcache.pipeline.teach",
        "TeachSummary": "kdcache.pipeline.teach.job",
        "open_cache": "kdcache.cache",
        "Cache": "kdcache.cache",
        "KDLoader": "kdcache.trainer.data.kd_loader",
        "KDBatch": "kdcache.trainer.data.kd_loader",
        "Targets": "kdcache.trainer.data.kd_loader",
        "DistillationLoss": "kdcache.trainer.kd",
        "KDTask": "kdcache.trainer.kd",
        "TrainConfig": "kdcache.trainer.run",
        "train": "kdcache.trainer.run",
        "evaluate_model": "kdcache.trainer.run",
        "KdcacheError": "kdcache.errors",
    },
)
