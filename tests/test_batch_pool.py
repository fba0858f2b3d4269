"""DataLoader workers write later batches into shared batches the main process has dropped
(``trainer.data.batch_pool``): the batches stay bitwise those of a loader without workers, a
batch the caller still holds is never written again, and dropped ones are reused."""

import hashlib

import kdcache

PLAN = {"crop_scale": (0.08, 1.0), "views": 2, "seed": 4}


def _loader(data, workers: int) -> kdcache.KDLoader:
    return kdcache.KDLoader(data.location, batch_size=8, workers=workers, plan=PLAN)


def _reference(data) -> dict:
    """Each sample's image bytes from a loader without workers (no pool), by row."""
    loader = _loader(data, 0)
    loader.set_epoch(1)
    return {row: digest for batch in loader for row, digest in _rows_of(batch).items()}


def _rows_of(batch) -> dict:
    """sha1 of each image of a batch, by row."""
    return {
        row: hashlib.sha1(image.numpy().tobytes()).hexdigest()
        for row, image in zip(batch.rows.tolist(), batch.images, strict=True)
    }


def test_dropped_batches_are_reused_and_bitwise(data):
    reference = _reference(data)
    loader = _loader(data, 2)
    loader.set_epoch(1)
    seen = {}
    for batch in loader:  # each batch dropped when the next comes
        seen |= _rows_of(batch)
    assert seen == reference
    assert loader._loader.pool.reused > 0  # 450 samples: 57 batches over 2 workers, 8 slots each


def test_held_batches_are_never_written_again(data):
    reference = _reference(data)
    loader = _loader(data, 2)
    loader.set_epoch(1)
    held = []
    at_receipt = {}
    for batch in loader:  # every batch kept: the workers run out of free slots
        held.append(batch)
        at_receipt |= _rows_of(batch)
    after = {}
    for batch in held:
        after |= _rows_of(batch)
    assert at_receipt == reference
    assert after == reference
    assert loader._loader.pool.reused == 0


def _online_batches(data, workers: int) -> dict:
    """sha1 of each sample's student and teacher view (an online teacher at another size), by
    row, from ``make_loader`` with ``workers``; and the pool's reuse count (None without)."""
    from kdcache.pipeline.views import ViewPlan
    from kdcache.trainer.data import TrainViews, make_loader
    from kdcache.trainer.data.targets import PlannedViews

    views = TrainViews(data, PlannedViews(ViewPlan(**PLAN), data), resolution=28,
                       teacher_resolution=32)  # fmt: skip
    loader = make_loader(views, 8, workers, False)
    views.set_epoch(1)
    seen = {}
    for batch in loader:
        for key in ("image", "teacher_image"):
            for row, image in zip(batch["row"].tolist(), batch[key], strict=True):
                seen[key, row] = hashlib.sha1(image.numpy().tobytes()).hexdigest()
    return seen, getattr(loader, "pool", None) and loader.pool.reused


def test_teacher_views_have_their_own_reused_batches(data):
    reference, _ = _online_batches(data, 0)
    seen, reused = _online_batches(data, 2)
    assert seen == reference
    assert reused > 0
