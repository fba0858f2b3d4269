"""The distillation benchmark's plan: every objective the issue asks for, at equal bytes."""

import pytest

from kdcache.errors import ConfigError
from kdcache.tools.bench.kd_objectives import (
    TAILS,
    BenchConfig,
    _runs,
    q6_bytes,
    q8_bytes,
    sampled_bytes,
    topk_bytes,
)


def test_runs_cover_every_objective_and_sampled_runs_match_topk_bytes():
    config = BenchConfig()
    runs = _runs(config, ["regnety", "resnet10t"])
    labels = [label for label, _, _ in runs]
    assert labels[0] == "no KD" and labels[-1] == "no KD, training seed 1"
    assert sum(options["kd"] == "hard" for _, _, options in runs) == 1
    topk = {(o["topk"], o["tail"]) for _, _, o in runs if "topk" in o}
    assert topk == {(k, tail) for k in config.topks for tail in TAILS}
    sampled = [(size, o["samples"]) for _, size, o in runs if o.get("targets") == "sampled"]
    assert [size for size, _ in sampled] == [topk_bytes(k) for k in config.topks]
    assert all(sampled_bytes(draws) == size for size, draws in sampled)
    ensemble = [o for _, _, o in runs if len(o.get("teachers", [])) == 2]
    assert ensemble == [{"kd": "soft", "teachers": ["regnety", "resnet10t"]}]
    assert topk_bytes(10) == 44  # fp16 logits + int16 ids + fp32 logsumexp


def test_q8_runs_read_the_q8_cache_at_its_bytes():
    runs = _runs(BenchConfig(q8=True), ["regnety", "resnet10t"])
    q8 = [(label, size, o) for label, size, o in runs if o.get("cache") == "q8"]
    assert [o["topk"] for _, _, o in q8] == [10, 5]
    # 10 levels + float16 scale + float16 logsumexp + 10 ids of 4 bits
    assert q8[0][1] == q8_bytes(10, 10) == 19
    assert not any(o.get("cache") for _, _, o in _runs(BenchConfig(), ["regnety", "resnet10t"]))


def test_dtype_rows_compare_fp16_q8_and_q6_at_the_same_budgets():
    config = BenchConfig(q8=True, q6=True, objectives=False)
    runs = _runs(config, ["regnety"])
    assert [(label, size) for label, size, _ in runs] == [
        ("no KD", 0),
        ("soft KD, full logits (top-10)", 44),
        ("soft KD, top-5", 24),
        ("soft KD, top-10, q8 targets", 19),
        ("soft KD, top-5, q8 targets", 12),
        ("soft KD, top-10, q6 targets", 10),  # K = C: no set rank, no tail code
        ("soft KD, top-5, q6 targets", q6_bytes(5, 10)),
        ("no KD, training seed 1", 0),
    ]
    assert q6_bytes(10, 1000) == 19 and q6_bytes(5, 10) == 7  # 8 + 3 + 24 + 16 bits
    assert {o.get("cache") for _, _, o in runs} == {None, "q8", "q6"}


def test_feature_rows_add_each_target_kinds_bytes_to_the_logits():
    """Per student: no KD, logits, + features, + attention, + both, seed noise; a row's bytes
    are the logits' plus its targets' (as the cache stores them); only attention rows name
    the student layer attention is learnt from."""
    from kdcache.tools.bench.kd_features import feature_runs

    config = BenchConfig(feature_rows=True)
    sizes = {"topk": 44.1, "pre_logits": 192.0, "attention:3:s4x4": 32.0}
    runs = feature_runs(config, sizes)
    assert [(label, size) for label, size, _ in runs[:6]] == [
        ("resnet10t: no KD", 0.0),
        ("resnet10t: soft KD, logits (top-10)", 44.1),
        ("resnet10t: logits + features (pre_logits)", 236.1),
        ("resnet10t: logits + attention (3:s4x4)", 76.1),
        ("resnet10t: logits + features + attention", 268.1),
        ("resnet10t: no KD, training seed 1", 0.0),
    ]
    assert [label for label, _, _ in runs[6:]] == [label.replace("resnet10t", "deit")
                                                   for label, _, _ in runs[:6]]  # fmt: skip
    both = runs[4][2]
    assert both["features"] == ("pre_logits",) and both["attention"] == ("3:s4x4",)
    assert both["student_layers"] == {"attention:3:s4x4": "layer2"}
    assert both["model_args"] == config.resnet_args and "student_layers" not in runs[2][2]
    assert runs[10][2]["student_layers"] == {"attention:3:s4x4": "attention:3"}
    assert runs[10][2]["model"] == config.student


def test_feature_rows_refuse_the_dtype_caches():
    with pytest.raises(ConfigError, match="feature rows have a cache of their own"):
        BenchConfig(feature_rows=True, q8=True)
    with pytest.raises(ConfigError, match=r"feature students \['convnext'\]"):
        BenchConfig(feature_rows=True, feature_students=("convnext",))
