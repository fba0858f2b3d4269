"""Training as jobs run it: online teacher baseline, SIGTERM and exact resume, torchrun DDP."""

import csv
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from kdcache.pipeline.teach import ModelSpec, create_model
from kdcache.tools.plot_runs import plot_runs
from kdcache.trainer.data import CachedTargets, TrainViews
from kdcache.trainer.run import RESUME_FILE, TrainConfig, evaluate_model, train
from tests.conftest import TOPK, make_shards

DEIT_ARGS = ["--model-arg", "patch_size=7", "--model-arg", "embed_dim=32"]
DEIT_ARGS += ["--model-arg", "depth=1", "--model-arg", "num_heads=2"]


def _rows(run) -> list[dict]:
    with open(os.path.join(run, "metrics.csv")) as f:
        return list(csv.DictReader(f))


def _resumed_rows(cut, whole, epochs: int) -> list[dict]:
    """The resumed run's metrics rows, checked equal to the uninterrupted run's (timings
    aside)."""
    resumed, uninterrupted = _rows(cut), _rows(whole)
    assert len(resumed) == len(uninterrupted) == epochs
    for got, want in zip(resumed, uninterrupted, strict=True):
        for name in want:
            if name not in ("seconds", "train_images_per_s"):
                assert got[name] == want[name], (name, got[name], want[name])
    return resumed


def _wait_for_epoch_0(job: subprocess.Popen, out) -> None:
    """Until ``job`` has saved epoch 0 in ``out``: a SIGTERM then stops epoch 1."""
    while not (out / RESUME_FILE).exists():
        assert job.poll() is None, "the run ended before it could be stopped"
        time.sleep(0.01)


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
    with pytest.raises(ValueError, match="teacher online needs a teacher checkpoint"):
        train(TrainConfig(out=str(tmp_path / "x"), teacher="online", **common))
    with pytest.raises(ValueError, match="cache holds cached targets; teacher online"):
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
    # dropout and drop-path: a resumed run must draw the same masks (its loader never takes
    # a draw from the global RNG after the state was saved)
    extra += (
        "--batch-size",
        "8",
        "--model-arg",
        "drop_rate=0.3",
        "--model-arg",
        "drop_path_rate=0.1",
    )
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    # the uninterrupted run goes on beside the cut one and its resume (independent runs)
    uncut = subprocess.Popen(_train_command(data, cache, whole, *extra))
    try:
        job = subprocess.Popen(_train_command(data, cache, cut, *extra), stdout=subprocess.PIPE)
        _wait_for_epoch_0(job, cut)
        job.send_signal(signal.SIGTERM)
        assert job.wait(timeout=120) == 143
        assert b"--resume" in job.stdout.read()
        state = torch.load(cut / RESUME_FILE, weights_only=True)
        epoch, step = state["progress"]["epoch"], state["progress"]["step"]
        views = TrainViews(data, CachedTargets(cache, data), resolution=28, seed=0)
        assert epoch in (1, 2)  # 2 only if this process slept through all of epoch 1
        assert 0 < step < views.epoch_split(epoch, 8, 2).steps  # inside the epoch
        assert len(_rows(cut)) == epoch

        result = subprocess.run(
            _train_command(data, cache, cut, *extra, "--resume", "--epochs", "4"),
            capture_output=True,
        )
        assert result.returncode == 2
        assert b"saved run has epochs=3, this run 4" in result.stderr

        subprocess.run(_train_command(data, cache, cut, *extra, "--resume"), check=True)
        assert uncut.wait(timeout=300) == 0
    finally:
        uncut.kill()  # (a no-op once it ended)
        uncut.wait()
    resumed = _resumed_rows(cut, whole, 3)
    assert "test_ema_acc" in resumed[-1]
    assert os.listdir(cut / "tensorboard") and (cut / "checkpoint-ema.pth").exists()

    png = tmp_path / "curves.png"
    panels = plot_runs([str(whole), str(cut)], str(png))
    assert panels[:2] == ["test_acc", "test_ema_acc"] and "train_kd" in panels
    assert png.stat().st_size > 10_000


def _torchrun(command: list[str], ranks: int) -> list[str]:
    torchrun = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks)]
    return [command[0], *torchrun, *command[1:]]  # python -m torch.distributed.run ... -m kdcache


def test_torchrun_two_processes_train_one_model(tmp_path, data, cache):
    """2 ranks, 5 train shards (3 and 2 per rank), a BatchNorm student: every sample trains
    each epoch (the smaller rank pads), and the reported test accuracy is the saved
    checkpoint's, evaluated alone (rank 0's BatchNorm statistics on every rank)."""
    out = tmp_path / "ddp"
    command = _train_command(data, cache, out, "--workers", "0", "--batch-size", "32")
    model = command.index("--model")
    command[model + 1 : model + 2 + len(DEIT_ARGS)] = ["resnet10t"]  # BatchNorm, not DeiT
    subprocess.run(_torchrun(command, 2), check=True, timeout=300)
    rows = _rows(out)
    views = TrainViews(data, CachedTargets(cache, data), resolution=28, seed=0)
    for epoch, row in enumerate(rows):
        split = views.epoch_split(epoch, 32, 0, 2)
        assert int(row["train_images"]) == 450 + sum(map(sum, split.pads))  # none dropped
        assert float(row["test_acc"]) * 2 == int(float(row["test_acc"]) * 2)  # all 200 images
    checkpoint = torch.load(out / "checkpoint.pth", weights_only=False)
    student = create_model(ModelSpec(**checkpoint["kdcache"]["spec"]))
    student.load_state_dict(checkpoint["model"])
    alone = evaluate_model(student, data.location, resolution=28)
    assert float(rows[-1]["test_acc"]) == pytest.approx(alone["acc"], abs=1e-9)


def test_ddp_resume_mid_epoch_reports_the_uninterrupted_metrics(tmp_path, data, cache):
    """2 gloo ranks stopped by SIGTERM (to one rank) inside epoch 1, then resumed: every rank
    continues from its own partial loss sums, so the rows equal the uninterrupted run's."""
    psutil = pytest.importorskip("psutil")
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    extra = ("--workers", "0", "--batch-size", "8", "--epochs", "2")

    def command(out, *more):
        line = _train_command(data, cache, out, *extra, *more)
        model = line.index("--model")
        line[model + 1 : model + 2 + len(DEIT_ARGS)] = ["resnet10t"]
        return _torchrun(line, 2)

    uncut = subprocess.Popen(command(whole))
    try:
        job = subprocess.Popen(command(cut), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        _wait_for_epoch_0(job, cut)
        ranks = psutil.Process(job.pid).children(recursive=True)
        ranks[-1].send_signal(signal.SIGTERM)  # one rank asks; all agree on a step and stop
        assert job.wait(timeout=300) != 0
        progress = torch.load(cut / RESUME_FILE, weights_only=True)["progress"]
        assert progress["epoch"] == 1 and progress["step"] > 0, progress
        subprocess.run(command(cut, "--resume"), check=True, timeout=600)
        assert uncut.wait(timeout=600) == 0
    finally:
        uncut.kill()
        uncut.wait()
    _resumed_rows(cut, whole, 2)


def test_more_ranks_than_shards_is_refused(tmp_path, data, cache):
    small = make_shards(tmp_path / "small", train_rows=200, test_rows=100)  # 2 train shards
    command = [sys.executable, "-m", "kdcache", "train", "--data", small.location, "--out",
               str(tmp_path / "r3"), "--model", "resnet10t", "--epochs", "1", "--workers", "0"]  # fmt: skip
    result = subprocess.run(_torchrun(command, 3), capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "2 train shards for 3 ranks: every rank needs a shard" in result.stderr


def _evaluate_after_sharing(rank: int, share: bool, out: str) -> None:
    """A rank whose BatchNorm statistics (and its EMA's) differ from rank 0's, as after each
    rank's own last training forwards; returns each rank's eval logits on one batch."""
    from timm.utils import ModelEmaV3

    from kdcache.trainer.run.distributed import World, share_buffers

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29531")
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4))
    ema = ModelEmaV3(net, decay=0.9)
    for module in (net, ema.module):
        module[1].running_mean.fill_(float(rank))  # rank-specific statistics
    if share:
        share_buffers(net, ema, World(rank=rank, size=2, local_rank=rank))
    x = torch.ones(2, 1, 5, 5)
    logits = [m.eval()(x) for m in (net, ema.module)]
    seen = [None, None]
    torch.distributed.all_gather_object(seen, logits)
    if rank == 0:
        torch.save(seen, out)
    torch.distributed.destroy_process_group()


@pytest.mark.parametrize("share", [True, False])
def test_every_rank_evaluates_rank_0s_batchnorm_statistics(tmp_path, share):
    """What makes the reported DDP accuracy the checkpoint's: after share_buffers every rank's
    model and EMA compute rank 0's outputs; without it they differ (the defect)."""
    out = str(tmp_path / "logits.pt")
    torch.multiprocessing.spawn(_evaluate_after_sharing, args=(share, out), nprocs=2)
    (net0, ema0), (net1, ema1) = torch.load(out)
    assert (torch.equal(net0, net1) and torch.equal(ema0, ema1)) is share
