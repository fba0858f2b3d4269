"""The trainer: refuses caches that do not fit, trains DeiT students with cached KD."""

import csv
import json
import re
from dataclasses import replace

import pytest
import torch

from kdcache.pipeline.cache import CacheMismatch
from kdcache.pipeline.teach import read_checkpoint_meta
from kdcache.trainer.data import CachedTargets, PlannedViews, TrainViews
from kdcache.trainer.run import TrainConfig, train
from tests.conftest import PLAN, SAMPLES, make_shards, teach

DEIT = "deit_tiny_distilled_patch16_224"
DEIT_ARGS = {"patch_size": 7, "embed_dim": 32, "depth": 1, "num_heads": 2}


def _config(data, out, **options):
    values = dict(
        manifest=data.location,
        out=str(out),
        model=DEIT,
        model_args=DEIT_ARGS,
        epochs=1,
        batch_size=64,
        workers=0,
        progress=False,
    )
    return TrainConfig(**{**values, **options})


def test_refuses_cache_of_other_shards(tmp_path, cache):
    other = make_shards(tmp_path / "other", train_rows=440)
    with pytest.raises(CacheMismatch, match="dataset.fingerprint"):
        train(_config(other, tmp_path / "run", kd="soft", cache=cache))
    assert not (tmp_path / "run" / "metrics.csv").exists()


def test_refuses_cache_of_other_plan(tmp_path, data, cache):
    with pytest.raises(CacheMismatch, match=r"plan.seed: 3 in cache vs 4"):
        train(_config(data, tmp_path / "run", kd="soft", cache=cache, plan={"seed": 4}))
    with pytest.raises(CacheMismatch, match=r"plan.crop_scale"):
        train(
            _config(data, tmp_path / "run", kd="soft", cache=cache, plan={"crop_scale": (0.5, 1.0)})
        )


def test_refuses_incomplete_cache_and_kd_without_cache(tmp_path, data, teacher_path, ray_local):
    partial = str(tmp_path / "partial.zarr")
    teach(data, teacher_path, partial, only_shards=[0, 1, 2])
    with pytest.raises(CacheMismatch, match="has not finished 2 train shards.*train-000003.tar"):
        train(_config(data, tmp_path / "run", kd="soft", cache=partial))
    with pytest.raises(ValueError, match="kd soft with teacher none: distillation needs a teacher"):
        train(_config(data, tmp_path / "run", kd="soft"))


def test_views_without_cache_equal_the_cached_views(data, cache):
    cached = TrainViews(data, CachedTargets(cache, data), resolution=28)
    planned = TrainViews(data, PlannedViews(PLAN, data), resolution=28)
    for views in (cached, planned):
        views.set_epoch(2)
    shards = data.shards_of("train")[3:4]
    for a, b in zip(cached.iter_views(shards), planned.iter_views(shards), strict=True):
        assert torch.equal(a["image"], b["image"])
        assert (a["row"], a["view"]) == (b["row"], b["view"]) and b["targets"] == {}
        assert list(a["targets"]) == ["regnet"]


def test_deit_student_learns_from_cached_soft_targets(tmp_path, data, cache):
    out = tmp_path / "run"
    final = train(
        _config(data, out, kd="soft", cache=cache, epochs=3, tau=2.0, lr=3e-3, warmup_epochs=0)
    )
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    assert all(float(r["train_kd"]) > 0 and float(r["train_ce"]) > 0 for r in rows)
    assert int(rows[0]["train_images"]) == 450
    assert {"test_acc", "test_acc_cls", "test_acc_dist"} <= set(rows[0])
    assert float(rows[-1]["train_kd"]) < float(rows[0]["train_kd"])  # it learns the teacher
    assert final == {k: pytest.approx(float(v)) for k, v in rows[-1].items()}
    config = json.loads((out / "config.json").read_text())
    assert config["plan"]["seed"] == PLAN.seed and config["teacher_identity"]["regnet"]["arch"]
    meta = read_checkpoint_meta(str(out / "checkpoint.pth"))
    assert meta["spec"]["arch"] == DEIT and meta["epoch"] == 2


def test_hard_distillation_and_one_head_student(tmp_path, data, cache):
    final = train(
        _config(data, tmp_path / "run", model="resnet10t", model_args={}, kd="hard", cache=cache)
    )
    assert "test_acc_cls" not in final and final["train_kd"] > 0


def test_soft_distillation_with_each_tail_option_trains(tmp_path, data, cache):
    for tail in ("renormalize", "bucket"):
        config = _config(
            data, tmp_path / tail, model="resnet10t", model_args={}, kd="soft", cache=cache
        )
        final = train(replace(config, tail=tail, tau=2.0))
        assert final["train_kd"] > 0
        assert json.loads((tmp_path / tail / "config.json").read_text())["tail"] == tail


def test_plain_vit_student_from_sampled_targets(tmp_path, data, sampled_cache):
    vit = {"patch_size": 7, "embed_dim": 32, "depth": 1, "num_heads": 2}
    config = _config(data, tmp_path / "vit", model="vit_tiny_patch16_224", model_args=vit)
    final = train(
        replace(config, kd="soft", cache=sampled_cache, teachers=["regnet"], targets="sampled")
    )
    assert final["train_kd"] > 0 and "test_acc_cls" not in final
    saved = json.loads((tmp_path / "vit" / "config.json").read_text())
    assert saved["targets"] == "sampled" and list(saved["teacher_identity"]) == ["regnet"]


def test_regnet_student_from_a_weighted_ensemble_and_deit_heads(tmp_path, data, sampled_cache):
    teachers = ["regnet", "regnet28"]
    config = _config(data, tmp_path / "regnet", model="regnety_002", model_args={})
    final = train(
        replace(
            config,
            kd="soft",
            cache=sampled_cache,
            teachers=teachers,
            teacher_weights={"regnet": 2.0, "regnet28": 1.0},
            tau=2.0,
        )
    )
    assert final["train_kd"] > 0
    assert (
        list(json.loads((tmp_path / "regnet" / "config.json").read_text())["teacher_identity"])
        == teachers
    )
    heads = {"cls": "regnet", "dist": "regnet28"}
    deit = _config(data, tmp_path / "deit", kd="soft", cache=sampled_cache, teachers=teachers)
    final = train(replace(deit, head_teachers=heads))
    assert final["train_kd"] > 0 and "test_acc_dist" in final


def test_refuses_what_the_cache_or_student_cannot_give(tmp_path, data, cache, sampled_cache):
    run = tmp_path / "run"
    with pytest.raises(CacheMismatch, match="has no sampled targets"):
        train(_config(data, run, kd="soft", cache=cache, targets="sampled"))
    with pytest.raises(CacheMismatch, match=f"holds {SAMPLES} sampled ids per view; asked for 9"):
        train(
            _config(
                data,
                run,
                kd="soft",
                cache=sampled_cache,
                teachers=["regnet"],
                targets="sampled",
                samples=9,
            )  # fmt: skip
        )
    with pytest.raises(CacheMismatch, match=r"holds teachers \['regnet', 'regnet28'\]; pick"):
        train(_config(data, run, kd="soft", cache=sampled_cache))
    with pytest.raises(CacheMismatch, match="no teacher 'other'"):
        train(_config(data, run, kd="soft", cache=sampled_cache, teachers=["regnet", "other"]))
    with pytest.raises(ValueError, match="the student has one head"):
        train(
            _config(
                data,
                run,
                model="resnet10t",
                model_args={},
                kd="soft",
                cache=sampled_cache,
                teachers=["regnet"],
                head_teachers={"cls": "regnet"},
            )  # fmt: skip
        )
    assert not run.exists()


def test_reads_a_prefix_of_the_cached_topk_and_samples(data, sampled_cache):
    shard = data.shards[1]
    full = CachedTargets(sampled_cache, data, teachers=["regnet"], sampled=True).block(shard)
    part = CachedTargets(
        sampled_cache, data, teachers=["regnet"], topk=2, sampled=True, samples=3
    ).block(shard)
    targets, kept = full.targets["regnet"], part.targets["regnet"]
    assert kept.topk_logits.shape[-1] == 2 and kept.sample_index.shape[-1] == 3
    assert (kept.topk_index == targets.topk_index[..., :2]).all()
    assert (kept.sample_index == targets.sample_index[..., :3]).all()
    assert (kept.logsumexp == targets.logsumexp).all()
    with pytest.raises(CacheMismatch, match="holds top-4; asked for top-5"):
        CachedTargets(sampled_cache, data, teachers=["regnet"], topk=5)


def test_profile_writes_a_trace_and_the_input_wait_share(tmp_path, data, capsys):
    """``--profile 3``: a Chrome trace of three steps and one line with the input-wait share;
    channels-last runs the same student."""
    out = tmp_path / "run"
    train(_config(data, out, kd="none", profile=3, channels_last=True, progress=True))
    trace = json.loads((out / "profile" / "trace-rank0.json").read_text())
    names = [event.get("name", "") for event in trace["traceEvents"]]
    assert names.count("kdcache.wait_for_input") == 3
    assert "aten::convolution" in names and any("Backward" in name for name in names)
    (line,) = [x for x in capsys.readouterr().out.splitlines() if x.startswith("profile:")]
    share = re.search(r"profile: 3 steps, [\d.]+ ms/step, waiting for input [\d.]+ ms/step "
                      r"\((\d+)% of step time\)", line)  # fmt: skip
    assert share and 0 <= int(share.group(1)) <= 100, line
