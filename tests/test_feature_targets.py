"""Feature and attention targets: a small ViT teacher cached with --features and
--attention (fp16 and q8), read back exactly, verified, sized by --dry-run; a ResNet student
trained from the cache with feature + logit KD equals the online teacher's run; the cached
timm FeatureDistillationTask equals timm's online one."""

import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import make_shards, teach
from timm.task import FeatureDistillationTask

from kdcache.errors import ConfigError
from kdcache.pipeline.cache import CachePlan, CacheStore, size_plan
from kdcache.pipeline.teach import (
    FeatureTaps,
    ModelSpec,
    TeacherSource,
    create_model,
    load_teacher,
    read_shard_images,
    requests,
    resolve_targets,
    save_checkpoint,
    teacher_targets,
)
from kdcache.pipeline.views import ViewPlan
from kdcache.tools.cache.inspect_cache import inspect_cache
from kdcache.trainer.data import KDLoader
from kdcache.trainer.kd import CachedFeatureDistillationTask
from kdcache.verify_cache import verify_cache

PLAN = ViewPlan(seed=2, views=2)
VIT = {"patch_size": 4, "embed_dim": 48, "depth": 2, "num_heads": 3}
FEATURES = ("pre_logits", "1:s2x2")
ATTENTION = ("1:s2x2",)
NAMES = ["pre_logits", "1:s2x2", "attention:1:s2x2"]


@pytest.fixture(scope="module")
def world(tmp_path_factory, ray_local):
    """100 train rows of Fashion-MNIST (one shard) and 50 test rows, a tiny ViT teacher (28 px,
    patch 4) trained a few steps here on them, and its caches with features and attention in
    fp16, q8 (also projected to 16 dims) and q6, each made by the real teach job."""
    root = tmp_path_factory.mktemp("features")
    manifest = make_shards(root / "data", train_rows=100, test_rows=50)
    checkpoint = str(root / "vit.pth")
    _train_teacher(manifest, checkpoint)
    caches = {}
    for dtype in ("fp16", "q8", "q6"):
        caches[dtype] = str(root / f"{dtype}.zarr")
        teach(manifest, None, caches[dtype], teachers=[TeacherSource(checkpoint, name="vit")],
              plan=PLAN, topk=10, features=FEATURES, attention=ATTENTION, workers=1,
              feature_dim=16 if dtype == "q8" else None, target_dtype=dtype)  # fmt: skip
    return manifest, checkpoint, caches


def _train_teacher(manifest, checkpoint: str) -> None:
    """Four AdamW steps of the ViT on the slice's replayed views (plain labels)."""
    torch.manual_seed(0)
    spec = ModelSpec("vit_tiny_patch16_224", 10, 1, 28, manifest.pixel_mean, manifest.pixel_std,
                     VIT)  # fmt: skip
    model = create_model(spec)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    loader = KDLoader(manifest.location, batch_size=25, workers=0, plan={"seed": 0})
    loader.set_epoch(0)
    for batch in loader:
        loss = torch.nn.functional.cross_entropy(model(batch.images), batch.labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    save_checkpoint(checkpoint, model.eval(), spec)


def test_requests_are_parsed_and_refused_by_name():
    assert [r.name for r in requests(("pre_logits", "layer3:s2x2", "0"), ("3",))] == [
        "pre_logits", "layer3:s2x2", "0:avg", "attention:3:full",
    ]  # fmt: skip
    for bad in (("pre_logits:avg",), ("layer3:s2x3",), ("layer3:max",)):
        with pytest.raises(ConfigError, match=re.escape(bad[0])):
            requests(bad, ())
    with pytest.raises(ConfigError, match="BLOCK must be a ViT block index"):
        requests((), ("blocks.1",))


def test_taps_give_timms_features_and_attention():
    """pre_logits is timm's forward_head(forward_features(x), pre_logits=True); an integer is
    forward_intermediates' index; attention is timm's own softmax weights (non-fused path)."""
    torch.manual_seed(0)
    spec = ModelSpec("vit_tiny_patch16_224", 10, 1, 28, (0.5,), (0.5,), VIT)
    model = create_model(spec).eval()
    targets = resolve_targets(model, 28, 1, requests(("pre_logits", "0:avg", "1:cls"),
                                                     ("1",)), None, "fp16")  # fmt: skip
    assert [t["shape"] for t in targets] == [[48], [48], [48], [7, 7]]
    x = torch.randn(3, 1, 28, 28)
    weights = {}
    attn = model.blocks[1].attn
    attn.fused_attn = False
    attn.attn_drop.register_forward_hook(lambda m, a, out: weights.update(w=out))
    with torch.no_grad(), FeatureTaps(model, targets) as taps:
        model(x)
        got = taps.collect()
        pre_logits = model.forward_head(model.forward_features(x), pre_logits=True)
        (inter,) = model.forward_intermediates(x, indices=[0], intermediates_only=True)
        ((_, prefix),) = model.forward_intermediates(
            x, indices=[1], intermediates_only=True, return_prefix_tokens=True
        )
    torch.testing.assert_close(got["pre_logits"], pre_logits, rtol=0, atol=1e-6)
    torch.testing.assert_close(got["0:avg"], inter.mean((2, 3)), rtol=0, atol=1e-6)
    torch.testing.assert_close(got["1:cls"], prefix[:, 0], rtol=0, atol=1e-6)
    timm_cls = weights["w"][:, :, 0, 1:].mean(1).reshape(3, 7, 7)
    torch.testing.assert_close(got["attention:1:full"], timm_cls, rtol=0, atol=1e-6)
    with pytest.raises(ConfigError, match="no module 'blocks.9'.*closest"):
        resolve_targets(model, 28, 1, requests(("blocks.9",), ()), None, "fp16")
    cnn = create_model(ModelSpec("resnet10t", 10, 1, 28, (0.5,), (0.5,)))
    with pytest.raises(ConfigError, match=r"attention needs a ViT with blocks\[1\].attn"):
        resolve_targets(cnn, 28, 1, requests((), ("1",)), None, "fp16")


def test_pre_logits_of_a_distilled_deit_is_timms_mean_of_its_two_tokens():
    """A distilled DeiT has two heads (get_classifier gives both): pre_logits is their mean
    input, timm's forward_head(..., pre_logits=True), as a student tap and a teacher target."""
    torch.manual_seed(0)
    spec = ModelSpec("deit_tiny_distilled_patch16_224", 10, 1, 28, (0.5,), (0.5,),
                     {"patch_size": 7, "embed_dim": 24, "depth": 1, "num_heads": 2})  # fmt: skip
    model = create_model(spec).eval()
    targets = resolve_targets(model, 28, 1, requests(("pre_logits",), ()), None, "fp16")
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad(), FeatureTaps(model, targets) as taps:
        model(x)
        got = taps.collect()["pre_logits"]
        want = model.forward_head(model.forward_features(x), pre_logits=True)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("dtype", ["fp16", "q8", "q6"])
def test_cached_features_are_the_teachers_stored_and_verified(world, dtype):
    manifest, checkpoint, caches = world
    store = CacheStore.open(caches[dtype])
    targets = store.feature_targets("vit")
    dim = 16 if dtype == "q8" else 48
    assert [(t["name"], t["shape"], t["dtype"]) for t in targets] == [
        ("pre_logits", [dim], dtype), ("1:s2x2", [dim, 2, 2], dtype),
        ("attention:1:s2x2", [2, 2], dtype),
    ]  # fmt: skip
    assert "features" in store.teacher_identity("vit")  # part of the identity (hashed)
    shard = manifest.shards_of(["train"])[0]
    block = store.read_verified("vit", shard)  # every region's checksum covers the features
    teacher = load_teacher(checkpoint, num_classes=10, in_chans=1)
    images = read_shard_images(manifest, shard)
    projections = {t["name"]: store.projection("vit", t["name"]) for t in targets}
    fresh = teacher_targets(teacher, store.plan, images, block.params, topk=10,
                            features=targets, projections=projections)  # fmt: skip
    assert (projections["pre_logits"] is not None) == (dtype == "q8")
    for name in NAMES:
        stored, exact = block.features[name], fresh.features[name]
        assert stored.shape == (100, 2, *targets[NAMES.index(name)]["shape"])
        flat, error = exact.reshape(200, -1), np.abs(stored - exact).reshape(200, -1)
        spread = (flat.max(1) - flat.min(1))[:, None] if dtype != "fp16" else 0
        allowed = spread / 255 + 2**-10 * np.abs(flat).max(1, keepdims=True)
        assert (error <= allowed).all(), (name, (error - allowed).max())
    report = verify_cache(caches[dtype], samples=8)
    assert report.ok, report.problems
    assert 0 <= report.largest_feature_diff <= 2 / 255
    assert "feature and attention targets: largest difference" in "\n".join(report.lines())


def test_dry_run_and_inspect_size_features_from_the_layout(world, tmp_path):
    """The dry run's bytes per feature array are the bytes on disk; a 384-d CLS token at q8
    costs at most 400 bytes per view (command line, one line per target)."""
    manifest, checkpoint, caches = world
    store = CacheStore.open(caches["q8"])
    plan = CachePlan(shards=1, shard_size=100, num_classes=10, views=2, topk=10,
                     params=len(PLAN.param_names), target_dtype="q8",
                     features=tuple(store.feature_targets("vit")))  # fmt: skip
    sized = size_plan(plan)["arrays"]
    folder = pathlib.Path(caches["q8"]) / "teachers" / "vit"
    for name in ("feat.pre_logits", "feat.pre_logits.range", "feat.attention_1_s2x2"):
        files = [f for f in (folder / name).rglob("*") if f.is_file() and f.name != "zarr.json"]
        on_disk = sum(f.stat().st_size for f in files)
        assert sized[f"teacher/{name}"]["bytes"] == on_disk, name
    spec = ModelSpec("vit_small_patch16_224", 10, 1, 28, (0.5,), (0.5,),
                     {"patch_size": 4, "depth": 1})  # fmt: skip
    save_checkpoint(str(tmp_path / "vit384.pth"), create_model(spec), spec)
    result = subprocess.run(
        [sys.executable, "-m", "kdcache", "teach", "--data", manifest.location, "--cache",
         str(tmp_path / "never.zarr"), "--teacher", str(tmp_path / "vit384.pth"), "--dry-run",
         "--target-dtype", "q8", "--features", "0:cls", "--features", "pre_logits",
         "--attention", "0:s4x4"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    per_view = dict(re.findall(r"^target (\S+): ([\d.]+) bytes per view", result.stdout, re.M))
    assert float(per_view["0:cls"]) <= 400 and float(per_view["pre_logits"]) <= 400
    assert float(per_view["attention:0:s4x4"]) < 21
    print(result.stdout)
    vit = inspect_cache(caches["q8"])["teachers"]["vit"]
    assert vit["features"]["pre_logits"] == [16]
    assert vit["target_bytes_per_view"]["pre_logits"] == pytest.approx(16 + 4, abs=0.5)


STUDENT = dict(model="resnet10t", resolution=28, epochs=1, batch_size=25, lr=2e-3,
               warmup_epochs=0, workers=0, kd="soft", feature_weight=1.0, attention_weight=0.5,
               student_layers={"1:s2x2": "layer3", "attention:1:s2x2": "layer3"})  # fmt: skip


def _metrics(out: pathlib.Path) -> dict:
    with open(out / "metrics.csv") as f:
        header, row = [line.strip().split(",") for line in f]
    return dict(zip(header, row, strict=True))


def test_resnet_student_cached_and_online_feature_kd_agree(world, tmp_path):
    """A ResNet student learns the ViT's pre-logits, its 2x2 block map and its attention with
    the logit KD term, from the cache and from the online teacher, which computes the same
    targets (both ``kdcache train`` on the command line): the same printed losses."""
    manifest, checkpoint, caches = world
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in STUDENT.items() if k != "student_layers"]
    flags += [f"--student-layer={k}={v}" for k, v in STUDENT["student_layers"].items()]
    online = ["--teacher", "online", "--teacher-checkpoint", checkpoint, f"--plan-seed={PLAN.seed}",
              f"--views={PLAN.views}", *(f"--features={f}" for f in FEATURES),
              *(f"--attention={a}" for a in ATTENTION)]  # fmt: skip
    # both through the command line: the same torch threads, so the same float sums
    for run, extra in (("cached", ["--cache", caches["fp16"]]), ("online", online)):
        result = subprocess.run(
            [sys.executable, "-m", "kdcache", "train", "--data", manifest.location, "--out",
             str(tmp_path / run), *extra, *flags],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-2000:]
        assert re.search(r"kd [\d.]+, feat [\d.]+, attn [\d.]+\)", result.stdout), result.stdout
    cached, online = _metrics(tmp_path / "cached"), _metrics(tmp_path / "online")
    for key in ("train_loss", "train_ce", "train_kd", "train_feat", "train_attn"):
        assert f"{float(cached[key]):.4f}" == f"{float(online[key]):.4f}", key
    assert float(cached["train_feat"]) > 0 and float(cached["train_attn"]) > 0
    saved = torch.load(tmp_path / "cached" / "checkpoint.pth", weights_only=True)
    adapters = saved["kdcache"]["feature_adapters"]
    assert adapters["adapters.pre_logits.weight"].shape == (48, 512)  # resnet10t: 512
    assert adapters["adapters.1_s2x2.weight"].shape == (48, 256, 1, 1)
    print({k: (cached[k], online[k]) for k in cached if k.startswith("train_")})


def test_batch_features_and_cached_timm_feature_task_parity(world):
    """KDLoader batches carry the features as plain tensors; the cached task on them gives
    timm's online FeatureDistillationTask's loss on the same student and teacher features."""
    manifest, checkpoint, caches = world
    loader = KDLoader(manifest.location, caches["fp16"], batch_size=8, workers=0)
    loader.set_epoch(0)
    batch = next(iter(loader))
    assert set(batch.features) == set(NAMES)
    assert batch.features["pre_logits"].shape == (8, 48)
    assert batch.features["pre_logits"].dtype == torch.float32
    teacher = load_teacher(checkpoint, num_classes=10, in_chans=1).model
    teacher.pretrained_cfg = {**teacher.pretrained_cfg, "mean": (0.5,), "std": (0.5,)}
    torch.manual_seed(1)
    student = create_model(ModelSpec("resnet10t", 10, 1, 28, (0.5,), (0.5,)))
    student.pretrained_cfg = {**student.pretrained_cfg, "mean": (0.5,), "std": (0.5,)}
    online = FeatureDistillationTask(student, teacher, distill_loss_weight=5.0,
                                     task_loss_weight=1.0, verbose=False)  # fmt: skip
    cached = CachedFeatureDistillationTask(student, 48, distill_loss_weight=5.0,
                                           task_loss_weight=1.0, verbose=False)  # fmt: skip
    cached.trainable_module.projection.load_state_dict(
        online.trainable_module.projection.state_dict()
    )
    images, labels = batch.images, batch.labels
    with torch.no_grad():
        features = online.teacher(online.teacher.normalize_input(
            images, online.student_mean, online.student_std), return_features=True)  # fmt: skip
        want = online(images, labels)
        got = cached(images, labels, {"features": {"pre_logits": features}})
        from_cache = cached(images, batch)
    for key in ("loss", "task_loss", "kd_loss"):
        assert abs(float(got[key]) - float(want[key])) <= 1e-5 * max(1.0, abs(float(want[key])))
    assert float(from_cache["kd_loss"]) > 0
    assert cached.get_task_state()["projection"]["weight"].shape == (48, 512)
