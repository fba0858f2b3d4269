"""Training as jobs run it: online teacher baseline, SIGTERM and exact resume, torchrun DDP."""

import csv
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from kdcache.tools.plot_runs import plot_runs
from kdcache.trainer.data import CachedTargets, TrainViews
from kdcache.trainer.run import RESUME_FILE, TrainConfig, train
from tests.conftest import TOPK

DEIT_ARGS = ["--model-arg", "patch_size=7", "--model-arg", "embed_dim=32"]
DEIT_ARGS += ["--model-arg", "depth=1", "--model-arg", "num_heads=2"]


def _rows(run) -> list[dict]:
    with open(os.path.join(run, "metrics.csv")) as f:
        return list(csv.DictReader(f))


def _train_command(data, cache, out, *extra) -> list[str]:
    return [
        *(sys.executable, "-m", "kdcache", "train", "--data", data.location, "--out", str(out)),
        *("--model", "deit_tiny_distilled_patch16_224", *DEIT_ARGS),
        *("--kd", "soft", "--cache", cache, "--epochs", "2", "--batch-size", "16"),
        *("--lr", "3e-3", "--warmup-epochs", "0", "--quiet", *extra),
    ]


def test_online_teacher_gives_the_cached_run_on_the_same_views(tmp_path, data, cache, teacher_path):
    common = dict(
        manifest=data.location,
        model="resnet10t",
        kd="soft",
        epochs=1,
        batch_size=64,
        workers=0,
        progress=False,
    )
    cached = train(TrainConfig(out=str(tmp_path / "cached"), cache=cache, **common))
    online = train(
        TrainConfig(
            out=str(tmp_path / "online"),
            teacher="online",
            teacher_checkpoint=teacher_path,
            topk=TOPK,
            plan={"seed": 3, "views": 3},
            **common,
        )
    )
    # same views, same reduction and fp16 rounding: the cache holds what online computes
    assert online["train_kd"] == pytest.approx(cached["train_kd"], rel=1e-5)
    assert online["train_ce"] == pytest.approx(cached["train_ce"], rel=1e-5)
    assert abs(online["test_acc"] - cached["test_acc"]) <= 1.0
    with pytest.raises(ValueError, match="--teacher online needs --teacher-checkpoint"):
        train(TrainConfig(out=str(tmp_path / "x"), teacher="online", **common))
    with pytest.raises(ValueError, match="--cache holds cached targets; --teacher online"):
        train(
            TrainConfig(
                out=str(tmp_path / "x"),
                teacher="online",
                teacher_checkpoint=teacher_path,
                cache=cache,
                **common,
            )
        )


def test_sigterm_mid_epoch_then_resume_matches_the_uninterrupted_run(tmp_path, data, cache):
    extra = ("--workers", "2", "--ema-decay", "0.9", "--tensorboard", "--epochs", "3")
    extra += ("--batch-size", "8")
    whole = tmp_path / "whole"
    subprocess.run(_train_command(data, cache, whole, *extra), check=True)
    cut = tmp_path / "cut"
    job = subprocess.Popen(_train_command(data, cache, cut, *extra), stdout=subprocess.PIPE)
    while not (cut / RESUME_FILE).exists():  # epoch 0 saved: a SIGTERM now stops epoch 1
        assert job.poll() is None, "the run ended before it could be stopped"
        time.sleep(0.01)
    job.send_signal(signal.SIGTERM)
    assert job.wait(timeout=120) == 143
    assert b"--resume" in job.stdout.read()
    state = torch.load(cut / RESUME_FILE, weights_only=False)
    epoch, step = state["progress"]["epoch"], state["progress"]["step"]
    views = TrainViews(data, CachedTargets(cache, data), resolution=28, seed=0)
    assert epoch in (1, 2)  # 2 only if this process slept through all of epoch 1
    assert 0 < step < views.epoch_steps(epoch, 8, 2)  # inside the epoch
    assert len(_rows(cut)) == epoch

    subprocess.run(_train_command(data, cache, cut, *extra, "--resume"), check=True)
    resumed, uninterrupted = _rows(cut), _rows(whole)
    assert len(resumed) == len(uninterrupted) == 3
    for got, want in zip(resumed, uninterrupted, strict=True):
        for name in want:
            if name not in ("seconds", "train_images_per_s"):
                assert float(got[name]) == pytest.approx(float(want[name]), rel=1e-6), name
    assert "test_ema_acc" in resumed[-1]
    assert os.listdir(cut / "tensorboard") and (cut / "checkpoint-ema.pth").exists()

    result = subprocess.run(
        _train_command(data, cache, cut, *extra, "--resume", "--epochs", "4"),
        capture_output=True,
    )
    assert result.returncode == 2
    assert b"saved run has epochs=3, this run 4" in result.stderr

    png = tmp_path / "curves.png"
    panels = plot_runs([str(whole), str(cut)], str(png))
    assert panels[:2] == ["test_acc", "test_ema_acc"] and "train_kd" in panels
    assert png.stat().st_size > 10_000


def test_torchrun_two_processes_train_one_model(tmp_path, data, cache):
    out = tmp_path / "ddp"
    command = _train_command(data, cache, out, "--workers", "0", "--batch-size", "32")
    torchrun = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m"]
    command[1:2] = torchrun  # python -m torch.distributed.run ... -m kdcache train ...
    subprocess.run(command, check=True, timeout=300)
    rows = _rows(out)
    views = TrainViews(data, CachedTargets(cache, data), resolution=28, seed=0)
    for epoch, row in enumerate(rows):
        # each rank trains on its own shards, stopping at the smaller rank's batch count
        order, steps = views.epoch_order(epoch), views.epoch_steps(epoch, 32, 0, 2)
        expected = sum(
            min(sum(s.num_rows for s in order[rank::2]), steps * 32) for rank in range(2)
        )
        assert int(row["train_images"]) == expected
        assert float(row["test_acc"]) * 2 == int(float(row["test_acc"]) * 2)  # all 200 images
    assert (out / "checkpoint.pth").exists()
