"""A teach config resolves against the cache it names, in the library: ``kdcache.teach`` and
``kdcache teach`` rerun, extend and refuse the same cache alike."""

import pytest

import kdcache
from kdcache.pipeline.cache import CacheMismatch, CacheStore
from kdcache.pipeline.teach import (
    ModelSpec,
    TeachConfig,
    TeacherSource,
    create_model,
    save_checkpoint,
)
from tests.conftest import run_cli


@pytest.fixture
def checkpoint(data, tmp_path) -> str:
    spec = ModelSpec("regnety_002", data.num_classes, data.channels, 28, data.pixel_mean,
                     data.pixel_std)  # fmt: skip
    path = str(tmp_path / "teacher.pth")
    save_checkpoint(path, create_model(spec), spec)
    return path


def test_the_library_and_the_cli_rerun_extend_and_refuse_a_cache_alike(
    data, checkpoint, ray_local, tmp_path, capsys
):
    cache = str(tmp_path / "cache.zarr")
    common = ["--data", data.location, "--cache", cache, "--teacher", checkpoint, "--quiet"]
    code, out = run_cli("teach", *common, "--topk", "3", "--samples", "2", "--target-dtype", "q8",
                     "--views", "1", "--plan-seed", "7", capsys=capsys)  # fmt: skip
    assert code == 0, out
    store = CacheStore.open(cache)
    attrs = (store.topk, store.samples, store.target_dtype, store.plan.seed, store.plan.views)
    assert attrs == (3, 2, "q8", 7, 1)

    def api(**options):
        config = TeachConfig(manifest=data.location, cache=cache, progress=False,
                             teachers=[TeacherSource(location=checkpoint)], **options)  # fmt: skip
        return kdcache.teach(config)

    rerun = api()  # unset topk, samples, dtype and plan: the cache's
    assert rerun.shards_done == [] and len(rerun.shards_skipped) == len(data.shards_of(["train"]))
    grown = api(plan={"views": 2})  # an extension: the cache's plan, one more view
    assert len(grown.shards_done) == len(rerun.shards_skipped)
    code, out = run_cli("teach", *common, capsys=capsys)  # the CLI reruns the grown cache
    assert code == 0 and "0 shards computed" in out, out
    store = CacheStore.open(cache)
    assert (store.topk, store.samples, store.target_dtype, store.plan.views) == (3, 2, "q8", 2)

    with pytest.raises(CacheMismatch, match="topk: 3 in cache vs 5") as refusal:
        api(topk=5)
    assert refusal.value.field == "topk"
    code, out = run_cli("teach", *common, "--topk", "5", capsys=capsys)
    assert code == 2 and "topk: 3 in cache vs 5" in out and "(option --topk)" in out, out
    with pytest.raises(CacheMismatch, match="holds 2 views; asked for 1"):
        api(plan={"views": 1})
    code, out = run_cli("teach", *common, "--views", "1", capsys=capsys)
    assert code == 2 and "holds 2 views; asked for 1" in out and "--views" in out, out
    assert CacheStore.open(cache).plan.views == 2


def test_a_config_names_the_field_it_refuses(data):
    base = TeachConfig(manifest=data.location, cache=None, teachers=[TeacherSource("t.pth")])
    for bad, field in (({"topk": 0}, "topk"), ({"block_rows": 0}, "block_rows"),
                       ({"target_dtype": "q4"}, "target_dtype"), ({"teachers": []}, "teacher.location"),
                       ({"plan": {"view": 2}}, "plan")):  # fmt: skip
        with pytest.raises(kdcache.errors.ConfigError) as refusal:  # made, or resolved
            TeachConfig(**{**base.__dict__, **bad}).resolved()
        assert refusal.value.field == field, (bad, refusal.value)
        assert "--" not in str(refusal.value)
