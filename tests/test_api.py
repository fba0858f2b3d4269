"""The public API: ``import kdcache`` from anywhere, a read-only cache, the KD loader (length,
epochs, no sample dropped under DDP), one-tensor loss, and the examples that use them."""

import os
import re
import subprocess
import sys

import pytest
import torch

import kdcache
from kdcache.pipeline.cache import CacheStore

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _python(code: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True)


def test_import_kdcache_from_outside_the_repository_shows_the_api(tmp_path):
    shown = _python("import kdcache; help(kdcache)", tmp_path)
    assert shown.returncode == 0, shown.stderr
    for name in ("open_cache", "KDLoader", "DistillationLoss", "shard", "teach", "train"):
        assert name in shown.stdout
    for generic in ("tools", "pipeline", "trainer"):
        assert _python(f"import {generic}", tmp_path).returncode != 0, generic
    light = _python("import sys, kdcache; print('torch' in sys.modules)", tmp_path)
    assert light.stdout.strip() == "False"


def test_open_cache_reads_what_the_store_holds(data, cache):
    opened = kdcache.open_cache(cache, data=data.location)  # the manifest lies outside its folder
    store = CacheStore.open(cache)
    assert opened.teachers == ["regnet"] and opened.plan == store.plan and opened.topk == 4
    assert opened.completeness() == {"regnet": 1.0} and opened.complete()
    shard = data.shards_of("train")[1]
    block = store.read_shard("regnet", shard)
    row = shard.id * data.shard_size + 7
    got = opened.targets(row, 2)
    for name, values in block.arrays().items():
        assert (got[name] == values[7, 2]).all(), name
    with pytest.raises(IndexError, match="view 3"):
        opened.targets(row, 3)
    report = opened.verify()
    assert report.ok and report.regions_checked == len(data.shards_of("train")) * 3


def test_loader_length_matches_its_batches_with_any_workers(data, cache):
    for workers in (0, 2):
        loader = kdcache.KDLoader(data.location, cache, batch_size=32, workers=workers)
        for epoch in (0, 1):
            loader.set_epoch(epoch)
            batches = list(loader)
            assert len(batches) == len(loader), (workers, epoch)
            rows = torch.cat([b.rows for b in batches])
            assert sorted(rows.tolist()) == list(range(len(rows)))  # every train row, once
            assert (torch.cat([b.views for b in batches]) == epoch).all()  # cycle schedule
    batch = batches[0]
    assert batch.images.shape == (32, 1, 28, 28) and batch.targets.topk_logits.shape == (32, 4)
    assert batch.images.mean().abs() < 1  # normalised with the dataset's statistics
    assert not batch.padded.any()


def test_loader_yields_whole_batches_and_at_most_one_partial_one(data, cache):
    """450 train rows in 5 shards read by 2 workers: each worker's short last batch is joined
    with the other's, so only the epoch's last batch is partial; drop_last drops it."""
    for drop_last in (False, True):
        loader = kdcache.KDLoader(
            data.location, cache, batch_size=32, workers=2, drop_last=drop_last
        )
        sizes = [len(b.labels) for b in loader]
        assert len(sizes) == len(loader) == (14 if drop_last else 15), sizes
        assert sizes[:14] == [32] * 14 and sum(sizes) == (448 if drop_last else 450)


def _rank_rows(rank: int, world: int, data: str, cache: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29517")
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    loader = kdcache.KDLoader(data, cache, batch_size=32, workers=2)
    loader.set_epoch(1)
    mine = [(b.rows, b.padded) for b in loader]
    seen = [None] * world
    torch.distributed.all_gather_object(seen, (len(loader), mine))
    if rank == 0:
        torch.save(seen, out)
    torch.distributed.destroy_process_group()


def test_ddp_ranks_take_equal_steps_and_see_every_sample_once(tmp_path, data, cache):
    """450 train rows in 5 shards over 2 ranks and batch 32: the ranks hold 3 and 2 shards;
    the smaller pads with repeats of its own samples instead of the larger dropping any."""
    out = str(tmp_path / "seen.pt")
    torch.multiprocessing.spawn(_rank_rows, args=(2, data.location, cache, out), nprocs=2)
    seen = torch.load(out)
    lengths = [length for length, _ in seen]
    assert lengths[0] == lengths[1] == len(seen[0][1]) == len(seen[1][1])
    rows = torch.cat([r for _, batches in seen for r, _ in batches])
    padded = torch.cat([p for _, batches in seen for _, p in batches])
    assert sorted(rows[~padded].tolist()) == list(range(450))  # each sample exactly once
    assert padded.sum() > 0 and set(rows[padded].tolist()) <= set(rows[~padded].tolist())


def test_loss_takes_targets_of_one_teacher_or_by_name(data, cache):
    loader = kdcache.KDLoader(data.location, cache, batch_size=16, workers=0)
    batch = next(iter(loader))
    logits = torch.randn(16, 10)
    loss = kdcache.DistillationLoss("soft", 10, alpha=0.5, tau=2.0)
    one = loss(logits, batch.labels, batch.targets)
    parts = loss.parts
    named = loss(logits, batch.labels, {"regnet": batch.targets.as_dict()})
    assert one.ndim == 0 and torch.equal(one, named)
    assert torch.allclose(one, 0.5 * parts["ce"] + 0.5 * parts["kd"])


def test_plain_loop_example_matches_kdcache_train(tmp_path, data, cache):
    run = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", "plain_loop.py"), data.location, cache],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    losses = [float(x) for x in re.findall(r"loss ([\d.]+)", run.stdout)]
    example_acc = float(re.findall(r"test acc ([\d.]+)%", run.stdout)[-1])
    assert len(losses) == 2 and losses[1] < losses[0]
    final = kdcache.train(
        kdcache.TrainConfig(
            manifest=data.location, out=str(tmp_path / "run"), model="resnet10t", kd="soft",
            cache=cache, epochs=2, batch_size=64, lr=3e-3, warmup_epochs=0, progress=False,
        )
    )  # fmt: skip
    assert abs(final["test_acc"] - example_acc) <= 0.1, (final["test_acc"], example_acc)


def test_lightning_example_trains_with_a_falling_loss(data, cache):
    pytest.importorskip("lightning")
    run = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", "lightning_module.py"), data.location,
         cache, "--epochs", "3", "--resolution", "32"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert "training at 32 px" in run.stdout
    assert "ambiguous" not in run.stderr  # every logged value has its batch size
    losses = [float(x) for x in re.findall(r"loss ([\d.]+)", run.stdout)]
    assert len(losses) == 3 and losses[-1] < losses[0], run.stdout
