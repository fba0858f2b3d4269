"""Joins under the ``shuffle`` schedule: every sample a loader yields carries the
cached targets of its own (row, view) — what ``kdcache.open_cache(...).targets(row, view)``
reads — and the image the plan's renderer makes of that view without a cache. Under ``shuffle``
one shard block holds several views, so a sample joined with another view's column of the
block is wrong here (under ``cycle`` a block holds one view and such a join is invisible).
Label-space mixing: the targets are the lam-mixture of the sample's and its partner's."""

import tarfile
from dataclasses import replace

import numpy as np
import pytest
import torch
import zarr

import kdcache
from kdcache.pipeline.views import ViewRenderer, normalize, source_image
from kdcache.trainer.data import LabelMixedTargets, TrainViews, ViewSchedule, make_loader
from tests.conftest import PLAN

SEED = 7  # the run's seed: the schedule's permutations and the shuffle follow it
MIXING = {"mixup_alpha": 0.8, "cutmix_alpha": 1.0}
EPOCH = 4  # the second round of the schedule's per-sample permutations, second view of it


@pytest.fixture(scope="module")
def stored(data, cache):
    """(row, view) -> the cached targets as float32 / int64 tensors: the cache's arrays as
    format kdcache/2 stores them (fp16 top-k here, read whole once), which are what
    ``kdcache.open_cache(cache).targets(row, view)`` gives — checked here on the first, middle
    and last row of every shard in every view (one such read is a region read, 10-50 ms: every
    sample's through it would take the test a minute)."""
    teacher = zarr.open_group(cache, mode="r")["teachers/regnet"]
    arrays = {name: teacher[name][:] for name in ("topk_logits", "topk_index", "logsumexp")}
    opened = kdcache.open_cache(cache, data=data.location)
    for shard in data.shards_of("train"):
        for row in data.shard_rows(shard)[[0, shard.num_rows // 2, -1]].tolist():
            for view in range(PLAN.views):
                read = opened.targets(row, view)
                for name, values in arrays.items():
                    assert np.array_equal(read[name], values[row, view]), (
                        f"row {row} view {view} {name}"
                    )

    def targets(row: int, view: int) -> dict[str, torch.Tensor]:
        return {
            "topk_logits": torch.from_numpy(arrays["topk_logits"][row, view].astype(np.float32)),
            "topk_index": torch.from_numpy(arrays["topk_index"][row, view].astype(np.int64)),
            "logsumexp": torch.tensor(float(arrays["logsumexp"][row, view])),
        }

    return targets


class Rendered:
    """The view shown as (row, view) found without the loader or a cache: the shard's images
    read from its tar, rendered by the plan's renderer with the plan's own params."""

    def __init__(self, data, plan, resolution: int):
        self.data, self.plan, self.resolution = data, plan, resolution
        self.renderer = ViewRenderer(plan)
        self._images, self._params = {}, {}

    def _where(self, row: int, view: int):
        """(shard's images, the view's params of the shard's rows, position of ``row``)."""
        shard = self.data.shards[row // self.data.shard_size]
        if shard.id not in self._images:
            self._images[shard.id] = _tar_images(self.data, shard)
        if (shard.id, view) not in self._params:
            self._params[shard.id, view] = self.plan.shard_params(self.data, shard, [view])[:, 0]
        position = row - shard.id * self.data.shard_size
        return self._images[shard.id], self._params[shard.id, view], position

    def image(self, row: int, view: int) -> torch.Tensor:
        """The view on [0, 1], (C, H, W)."""
        images, params, position = self._where(row, view)
        return self.renderer.render(images, params, position, self.resolution)

    def partner(self, row: int, view: int) -> tuple[int, float]:
        """The row the view is mixed with (itself if unmixed) and the weight of its own label."""
        _, params, position = self._where(row, view)
        partner = self.renderer.partner(params[position])
        partner_row = row if partner is None else row - position + partner
        return partner_row, self.renderer.label_weight(params[position], self.resolution)


def _tar_images(data, shard) -> list:
    """A shard's images in tar order, read with ``tarfile`` (not the loader's reader)."""
    with tarfile.open(data.shard_url(shard)) as tar:
        encoded = {
            member.name.rsplit(".", 1)[0]: tar.extractfile(member).read()
            for member in tar.getmembers()
            if member.name.endswith(".png")
        }
    return [source_image(encoded[key], data.channels) for key in data.shard_keys(shard)]


def _check_schedule(data, rows: torch.Tensor, views: torch.Tensor) -> None:
    """Every train row once, in the view the shuffle schedule gives it, and the views of one
    shard mixed (the case a per-block join could get wrong)."""
    assert sorted(rows.tolist()) == [r for s in data.shards_of("train")
                                     for r in data.shard_rows(s)]  # fmt: skip
    schedule = ViewSchedule("shuffle", PLAN.views, SEED)
    assert views.tolist() == schedule.views_for(EPOCH, rows.numpy()).tolist()
    for shard in data.shards_of("train"):
        mine = views[rows // data.shard_size == shard.id]
        assert len(set(mine.tolist())) == PLAN.views, shard.file


@pytest.mark.parametrize("workers", [0, 2])
def test_kdloader_under_shuffle_joins_each_sample_with_its_own_view(data, cache, stored, workers):
    loader = kdcache.KDLoader(data.location, cache, batch_size=64, workers=workers, seed=SEED,
                              view_schedule="shuffle")  # fmt: skip
    loader.set_epoch(EPOCH)
    rendered = Rendered(data, PLAN, loader.resolution)
    batches = list(loader)
    rows, views = torch.cat([b.rows for b in batches]), torch.cat([b.views for b in batches])
    _check_schedule(data, rows, views)
    for batch in batches:
        assert torch.equal(batch.labels, torch.from_numpy(data.labels[batch.rows.numpy()]))
        for i, (row, view) in enumerate(
            zip(batch.rows.tolist(), batch.views.tolist(), strict=True)
        ):
            got = {name: values[i] for name, values in batch.targets.as_dict().items()}
            expected = stored(row, view)
            for name in ("topk_logits", "topk_index", "logsumexp"):
                assert torch.equal(got[name], expected[name]), f"row {row} view {view}: {name}"
            image = normalize(rendered.image(row, view), data.pixel_mean, data.pixel_std)
            assert torch.equal(batch.images[i], image), f"row {row} view {view}: image"


def _train_loader(data, cache: str, workers: int):
    """The loader ``kdcache train --cache CACHE --mixing label --mixup-alpha 0.8 --cutmix-alpha
    1 --view-schedule shuffle --seed SEED --resolution 28`` trains on: built as
    ``trainer/run/engine.py`` builds it (its batches are the dicts the training step takes)."""
    source = LabelMixedTargets(cache, data, plan=MIXING)
    views = TrainViews(data, source, resolution=28, seed=SEED,
                       schedule=ViewSchedule("shuffle", source.plan.views, SEED),
                       mix_targets=True)  # fmt: skip
    return views, make_loader(views, 64, workers, False, SEED)


def _probabilities(targets: dict[str, torch.Tensor], classes: int) -> torch.Tensor:
    """A cached top-k's distribution over all classes: the top-k's own probabilities, the
    rest of the mass spread evenly over the other classes (the mixture's definition)."""
    top = (targets["topk_logits"] - targets["logsumexp"]).exp()
    tail = (1 - top.sum()) / (classes - top.numel())
    return torch.full((classes,), float(tail)).scatter(0, targets["topk_index"], top)


@pytest.mark.parametrize("workers", [0, 2])
def test_label_mixing_under_shuffle_mixes_each_sample_with_its_partners_view(
    data, cache, stored, workers
):
    views, loader = _train_loader(data, cache, workers)
    views.set_epoch(EPOCH)
    rendered = Rendered(data, replace(kdcache.open_cache(cache).plan, **MIXING), 28)
    batches = list(loader)
    rows = torch.cat([b["row"] for b in batches])
    _check_schedule(data, rows, torch.cat([b["view"] for b in batches]))
    classes, mixed = data.num_classes, 0
    for batch in batches:
        targets = batch["targets"]["regnet"]
        for i, (row, view) in enumerate(
            zip(batch["row"].tolist(), batch["view"].tolist(), strict=True)
        ):
            partner, lam = rendered.partner(row, view)
            mixed += partner != row
            assert batch["mix_lam"][i].item() == lam, f"row {row} view {view}"
            assert batch["mix_label"][i].item() == data.labels[partner], f"row {row} view {view}"
            expected = lam * _probabilities(stored(row, view), classes) + (
                1 - lam
            ) * _probabilities(stored(partner, view), classes)
            got = torch.zeros(classes).scatter(
                0, targets["topk_index"][i], targets["topk_logits"][i].exp()
            )
            torch.testing.assert_close(
                got, expected, rtol=1e-4, atol=1e-6, msg=f"row {row} view {view}: mixed targets"
            )
            assert torch.equal(batch["image"][i], rendered.image(row, view)), (
                f"row {row} view {view}"
            )
    assert mixed > 0.9 * len(rows)  # mix_prob 1: (almost) every view has a partner
