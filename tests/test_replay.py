"""Replay: the trainer's views are bitwise the teacher job's inputs, for every operation and
for Mixup/CutMix; cached targets of mixed views are the teacher's output on the trainer's
rebuilt image; label-space mixing differs from it."""

import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
import zarr

from kdcache.errors import CacheCorrupt
from kdcache.pipeline.cache import CacheStore
from kdcache.pipeline.teach import load_teacher, read_shard_images, teacher_inputs
from kdcache.pipeline.views import ViewPlan, ViewRenderer, normalize
from kdcache.trainer.data import CachedTargets, LabelMixedTargets, PlannedViews, TrainViews
from kdcache.verify_replay import replay_check
from tests.conftest import MIXED_PLAN

RESOLUTION = 32
BASE = ViewPlan(seed=11, views=2)
OPERATIONS = {
    "crop_flip": BASE,
    "randaugment": replace(BASE, randaugment="rand-m9-n3-mstd0.5-inc1-p1.0"),
    "color_jitter": replace(BASE, color_jitter=(0.6, 0.6, 0.0, 0.0)),
    "erasing_const": replace(BASE, erase_prob=1.0, erase_mode="const"),
    "erasing_pixel": replace(BASE, erase_prob=1.0, erase_mode="pixel"),
    "mixup": replace(BASE, mixup_alpha=1.0),
    "cutmix": replace(BASE, cutmix_alpha=1.0),
}


class _Spec:  # the teacher preprocessing the job normalises with
    resolution, mean, std = RESOLUTION, (0.286,), (0.353,)


def _trainer_views(data, source, epoch: int, shard) -> dict[int, torch.Tensor]:
    """position -> normalised view, through the trainer's loader (TrainViews.iter_views)."""
    views = TrainViews(data, source, resolution=RESOLUTION)
    views.set_epoch(epoch)
    start = shard.id * data.shard_size
    return {
        s["row"] - start: normalize(s["image"], _Spec.mean, _Spec.std)
        for s in views.iter_views([shard])
    }


def _job_views(data, plan, shard, view: int) -> torch.Tensor:
    """The batch the teacher job feeds the teacher for every position of a shard's view."""
    images = read_shard_images(data, shard)
    params = plan.shard_params(data, shard, views=[view])[:, 0]
    return teacher_inputs(ViewRenderer(plan), images, params, range(len(images)), _Spec)


@pytest.mark.parametrize("name", list(OPERATIONS))
def test_trainer_replays_the_job_input_bitwise_for_every_operation(data, name):
    plan = OPERATIONS[name]
    shard = data.shards_of("train")[-1]  # the short shard: partners among its 50 rows
    for view in range(plan.views):
        job = _job_views(data, plan, shard, view)
        trainer = _trainer_views(data, PlannedViews(plan, data), view, shard)
        assert len(trainer) == shard.num_rows
        replayed = torch.stack([trainer[p] for p in range(shard.num_rows)])
        assert torch.equal(replayed, job), name
    # the operation does something, and the seed and the view index change the tensors
    if name != "crop_flip":
        assert (job != _job_views(data, BASE, shard, 1)).flatten(1).any(1).float().mean() > 0.3
    other_seed = _job_views(data, replace(plan, seed=12), shard, 1)
    assert (job != other_seed).flatten(1).any(1).all()
    assert (job != _job_views(data, plan, shard, 0)).flatten(1).any(1).all()


def test_mixed_views_replay_from_the_cache_and_its_targets_are_the_teachers(
    data, mixed_cache, teacher_path
):
    teacher = load_teacher(teacher_path)
    spec = teacher.spec
    source = CachedTargets(mixed_cache, data)
    assert source.plan == MIXED_PLAN
    views = TrainViews(data, source, resolution=spec.resolution)
    shard = data.shards_of("train")[1]
    images = read_shard_images(data, shard)
    for view in range(MIXED_PLAN.views):
        views.set_epoch(view)
        samples = list(views.iter_views([shard]))
        params = MIXED_PLAN.shard_params(data, shard, views=[view])[:, 0]
        job = teacher_inputs(ViewRenderer(MIXED_PLAN), images, params, range(len(images)), spec)
        batch = normalize(torch.stack([s["image"] for s in samples]), spec.mean, spec.std)
        assert torch.equal(batch, job)
        lam = torch.tensor([s["mix_lam"] for s in samples])
        assert (lam < 1).float().mean() > 0.9  # mix_prob 1: (almost) every view is mixed
        assert any(s["mix_label"] != s["label"] for s in samples)
        with torch.inference_mode():
            logits = teacher.model(batch)
        values, index = logits.topk(source.topk)
        cached = torch.stack([s["targets"]["regnet"]["topk_logits"] for s in samples])
        torch.testing.assert_close(cached, values.half().float(), rtol=2e-3, atol=2e-3)
        assert torch.equal(
            torch.stack([s["targets"]["regnet"]["topk_index"] for s in samples]), index
        )


def test_label_space_mixing_mixes_cached_targets_and_differs_from_the_teacher(
    data, cache, teacher_path
):
    teacher = load_teacher(teacher_path)
    spec = teacher.spec
    mixing = {"mixup_alpha": 0.8, "cutmix_alpha": 1.0}
    source = LabelMixedTargets(cache, data, plan=mixing)
    views = TrainViews(data, source, resolution=spec.resolution, mix_targets=True)
    shard = data.shards_of("train")[0]
    samples = list(views.iter_views([shard]))
    plain = {s["row"]: s for s in TrainViews(data, CachedTargets(cache, data),
                                            resolution=spec.resolution).iter_views([shard])}  # fmt: skip
    batch = normalize(torch.stack([s["image"] for s in samples]), spec.mean, spec.std)
    with torch.inference_mode():
        teacher_probs = teacher.model(batch).softmax(-1)
    block, renderer = source.block(shard), ViewRenderer(source.plan)
    gaps = []
    for sample, truth in zip(samples, teacher_probs, strict=True):
        target = sample["targets"]["regnet"]
        assert target["topk_index"].numel() == data.num_classes  # full-class mixture
        probs = torch.zeros(data.num_classes).scatter(
            0, target["topk_index"], target["topk_logits"].exp()
        )
        position = sample["row"] - shard.id * data.shard_size
        partner = renderer.partner(block.params[position, 0])
        partner = position if partner is None else partner
        own = plain[sample["row"]]["targets"]["regnet"]
        other = plain[shard.id * data.shard_size + partner]["targets"]["regnet"]
        expected = torch.zeros(data.num_classes)
        lam = sample["mix_lam"]
        for weight, t in ((lam, own), (1 - lam, other)):
            top = (t["topk_logits"] - t["logsumexp"]).exp()
            tail = (1 - top.sum()) / (data.num_classes - top.numel())
            expected += weight * torch.full((data.num_classes,), float(tail)).scatter(
                0, t["topk_index"], top
            )
        torch.testing.assert_close(probs, expected, rtol=1e-4, atol=1e-5)
        gaps.append(float((probs - truth).abs().max()))
    # label-space targets are not what the teacher says of the mixed image: their gap is
    # far above the cache's fp16 error (about 1e-4 in probability, see the exact test)
    gaps = np.array(gaps)
    assert (gaps > 5e-3).mean() > 0.9 and np.median(gaps) > 1e-2


def test_label_space_mixing_refuses_a_mixed_cache(data, mixed_cache):
    with pytest.raises(ValueError, match="label mixing needs a cache without mixing"):
        LabelMixedTargets(mixed_cache, data, plan={"mixup_alpha": 1.0})


def test_verify_replay_reports_zero_difference_and_catches_altered_params(
    data, mixed_cache, teacher_path, tmp_path, capsys
):
    from kdcache.tools.cli.main import main

    main(["verify", mixed_cache, "--replay", "--samples", "10", "--data", data.location,
          "--teacher", f"regnet={teacher_path}"])  # fmt: skip
    out = capsys.readouterr().out
    assert "verify: replay: 10 views rebuilt" in out and "largest pixel difference" in out
    assert "teacher's input 0\n" in out

    altered = tmp_path / "altered.zarr"
    shutil.copytree(mixed_cache, altered)
    params = zarr.open_group(str(altered), mode="r+")["params"]
    column = MIXED_PLAN.param_names.index("crop_left")
    rows = params[:100, :, column]
    params[:100, :, column] = np.where(rows > 0.05, rows - 0.05, rows + 0.05)
    store = CacheStore.open(str(altered))
    # the views' recorded parameters are covered by the region checksums: refused before replay
    with pytest.raises(CacheCorrupt, match=r"shard shards/train-000000.tar \(id 0\), view \d: "
                       "checksum mismatch"):  # fmt: skip
        replay_check(store, data, samples=10)


@pytest.mark.parametrize("mixing", ["exact", "label"])
def test_students_train_on_exact_and_label_space_mixing(data, cache, mixed_cache, tmp_path, mixing):
    import json
    import math

    from kdcache.trainer.run import TrainConfig, train

    options = (
        {"cache": mixed_cache}
        if mixing == "exact"
        else {"cache": cache, "plan": {"mixup_alpha": 0.8, "cutmix_alpha": 1.0}}
    )
    out = tmp_path / mixing
    final = train(
        TrainConfig(
            manifest=data.location, out=str(out), model="deit_tiny_distilled_patch16_224",
            model_args={"patch_size": 7, "embed_dim": 32, "depth": 1, "num_heads": 2},
            kd="soft", mixing=mixing, view_schedule="shuffle", epochs=1, batch_size=64,
            workers=0, progress=False, **options,
        )
    )  # fmt: skip
    assert math.isfinite(final["train_loss"]) and final["train_images"] == 450
    config = json.loads((out / "config.json").read_text())
    assert (config["mixing"], config["view_schedule"]) == (mixing, "shuffle")
    assert "mixup" in config["plan"]["operations"]
