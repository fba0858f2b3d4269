"""The plan's new operations: draws within their documented ranges, timm's semantics,
self-describing attrs, CLI options, and the view schedules."""

import argparse
import random

import numpy as np
import pytest

from kdcache.pipeline.views import ViewPlan, parse_randaugment
from kdcache.tools.cli.plan_options import add_plan_arguments, plan_overrides
from kdcache.trainer.data import ViewSchedule

EVERYTHING = ViewPlan(
    seed=2,
    views=3,
    randaugment="rand-m9-mstd0.5-inc1",
    color_jitter=(0.4, 0.3, 0.2, 0.1),
    erase_prob=0.25,
    erase_mode="rand",
    mixup_alpha=0.8,
    cutmix_alpha=1.0,
    mix_prob=0.8,
    mix_switch_prob=0.5,
)
ROWS = 2000
SHARD = 100


def _columns(plan: ViewPlan = EVERYTHING) -> dict[str, np.ndarray]:
    params = plan.params(np.arange(ROWS), np.ones(ROWS), shard_size=SHARD, shard_rows=SHARD)
    return {name: params[..., i] for i, name in enumerate(plan.param_names)}


def test_attrs_name_and_explain_every_column_and_round_trip():
    attrs = EVERYTHING.to_attrs()
    assert attrs["params_layout"] == "kdcache-params/2"
    assert attrs["param_names"][:5] == [
        "crop_top",
        "crop_left",
        "crop_height",
        "crop_width",
        "flip",
    ]
    assert set(attrs["param_meaning"]) == set(attrs["param_names"])
    assert attrs["randaugment_ops"][3] == "Rotate"
    assert attrs["operations"][-2:] == ["mixup", "cutmix"]
    assert ViewPlan.from_attrs(attrs) == EVERYTHING
    assert ViewPlan().param_names == ViewPlan(randaugment="").param_names  # off adds no column
    assert len(ViewPlan().param_names) == 5


def test_new_operations_do_not_change_the_crop_and_flip_draws():
    plain = ViewPlan(seed=2, views=3).params(np.arange(ROWS), np.ones(ROWS))
    full = EVERYTHING.params(np.arange(ROWS), np.ones(ROWS), shard_size=SHARD, shard_rows=SHARD)
    np.testing.assert_array_equal(full[..., :5], plain)


def test_jitter_and_erasing_follow_torchvision_and_timm_ranges():
    c = _columns()
    b, s, h = c["jitter_brightness"], c["jitter_saturation"], c["jitter_hue"]
    assert b.min() >= 0.6 and b.max() <= 1.4 and abs(b.mean() - 1) < 0.02
    assert s.min() >= 0.8 and s.max() <= 1.2 and h.min() >= -0.1 and h.max() <= 0.1
    assert sorted(np.unique(c["jitter_order"])) == list(range(24))
    erased = c["erase_height"] > 0
    assert abs(erased.mean() - 0.25) < 0.02
    area = (c["erase_height"] * c["erase_width"])[erased]
    assert area.min() >= 0.02 - 1e-6 and area.max() <= 1 / 3 + 1e-6
    assert (c["erase_top"] + c["erase_height"] <= 1 + 1e-6).all()
    assert (c["erase_seed"] == np.floor(c["erase_seed"])).all() and c["erase_seed"].max() < 2**24


def test_mixing_partners_lambda_and_boxes_follow_timm_elementwise_mixup():
    c = _columns()
    mode, lam = c["mix_mode"], c["mix_lam"]
    position = np.arange(ROWS)[:, None] % SHARD
    partner = c["mix_partner"]
    assert abs((mode > 0).mean() - 0.8) < 0.02  # mix_prob
    assert abs((mode[mode > 0] == 2).mean() - 0.5) < 0.03  # switch to CutMix
    mixed = mode > 0
    assert (partner[mixed] != position.repeat(3, 1)[mixed]).all()
    assert (partner >= 0).all() and (partner < SHARD).all()
    assert (partner[~mixed] == position.repeat(3, 1)[~mixed]).all() and (lam[~mixed] == 1).all()
    mixup = lam[mode == 1]  # Beta(0.8, 0.8): mean 1/2, variance 1/(4 * 2.6)
    assert abs(mixup.mean() - 0.5) < 0.02 and abs(mixup.var() - 1 / 10.4) < 0.01
    cut = mode == 2
    box = c["mix_height"][cut] * c["mix_width"][cut]
    np.testing.assert_allclose(lam[cut], 1 - box, atol=1e-6)  # timm's correct_lam
    assert (c["mix_top"][cut] + c["mix_height"][cut] <= 1 + 1e-6).all()
    assert (c["mix_height"][mode != 2] == 0).all()
    # a one-row shard has no partner: the view is its own
    single = EVERYTHING.params(np.array([0]), np.ones(1), shard_size=1, shard_rows=1)
    assert single[0, :, EVERYTHING.param_names.index("mix_partner")].tolist() == [0, 0, 0]


def test_randaugment_records_timm_ops_magnitudes_and_arguments():
    augment = parse_randaugment(EVERYTHING.randaugment)
    c = _columns()
    for layer in range(augment.num_layers):
        op = c[f"ra{layer}_op"].astype(int)
        assert abs((op >= 0).mean() - 0.5) < 0.02  # timm's p = 0.5 per layer
        used = np.unique(op[op >= 0])
        assert len(used) == len(augment.ops)  # uniform choice over timm's whole op set
        magnitude = c[f"ra{layer}_magnitude"][op >= 0]
        assert magnitude.min() >= 0 and magnitude.max() <= 10
        assert abs(magnitude.mean() - 9) < 0.1 and abs(magnitude.std() - 0.5) < 0.1
        for index in used:
            chosen = op == index
            ops = augment.ops[index]
            if ops.level_fn is None:
                continue
            # every recorded argument is timm's level-to-arg value of the recorded magnitude,
            # with one of the two signs timm's random negation can give
            for m, arg in list(
                zip(c[f"ra{layer}_magnitude"][chosen], c[f"ra{layer}_arg"][chosen], strict=True)
            )[:20]:
                options = set()
                for seed in range(40):
                    random.seed(seed)
                    options.add(float(ops.level_fn(float(m), ops.hparams)[0]))
                # the magnitude column is float32: allow its rounding
                assert np.isclose(arg, sorted(options), rtol=1e-5, atol=1e-5).any(), (
                    ops.name,
                    m,
                    arg,
                )
    rotate = c["ra0_arg"][
        c["ra0_op"] == augment.ops.index(next(o for o in augment.ops if o.name == "Rotate"))
    ]
    assert (rotate < 0).any() and (rotate > 0).any()  # both signs occur
    with pytest.raises(ValueError, match="plan.randaugment: 'rand-q9'"):
        ViewPlan(randaugment="rand-q9")


def test_weighted_randaugment_picks_without_replacement():
    plan = ViewPlan(randaugment="rand-m9-n3-tweights")
    params = plan.params(np.arange(500), np.ones(500))
    names = plan.param_names
    chosen = params[..., [names.index(f"ra{i}_op") for i in range(3)]]
    weights = parse_randaugment(plan.randaugment).choice_weights
    assert weights is not None
    # layers that apply never repeat an op within a view
    for row in chosen.reshape(-1, 3):
        applied = row[row >= 0]
        assert len(set(applied.tolist())) == len(applied)


def test_plan_options_reach_the_plan_from_the_command_line():
    parser = argparse.ArgumentParser()
    add_plan_arguments(parser, defaults_from="test")
    args = parser.parse_args(
        [
            "--randaugment",
            "rand-m7",
            "--color-jitter",
            "0.4",
            "0.4",
            "0.4",
            "0",
            "--erase-prob",
            "0.3",
            "--erase-mode",
            "pixel",
            "--mixup-alpha",
            "0.2",
            "--cutmix-alpha",
            "1",
            "--mix-prob",
            "0.5",
            "--mix-switch-prob",
            "0.25",
        ]
    )
    plan = ViewPlan(**plan_overrides(args))
    assert plan.randaugment == "rand-m7" and plan.color_jitter == (0.4, 0.4, 0.4, 0.0)
    assert (plan.erase_prob, plan.erase_mode) == (0.3, "pixel")
    assert (plan.mixup_alpha, plan.cutmix_alpha, plan.mix_prob, plan.mix_switch_prob) == (
        0.2, 1.0, 0.5, 0.25,
    )  # fmt: skip
    with pytest.raises(ValueError, match="erase_mode"):
        ViewPlan(erase_mode="noise")
    with pytest.raises(ValueError, match="mixing plan needs shard_size"):
        ViewPlan(mixup_alpha=1.0).params(np.arange(3), np.ones(3))


def test_view_schedules_cycle_or_shuffle_each_samples_views():
    rows = np.arange(1000)
    cycle = ViewSchedule("cycle", views=4)
    assert [cycle.views_for(e, rows[:2]).tolist() for e in (0, 5)] == [[0, 0], [1, 1]]
    shuffle = ViewSchedule("shuffle", views=4, seed=1)
    first = np.stack([shuffle.views_for(e, rows) for e in range(4)], 1)
    assert (np.sort(first, 1) == np.arange(4)).all()  # each view once per 4 epochs
    assert len(np.unique(first[:, 0])) == 4  # samples are in different views in one epoch
    second = np.stack([shuffle.views_for(e, rows) for e in range(4, 8)], 1)
    assert (np.sort(second, 1) == np.arange(4)).all() and (second != first).any(1).mean() > 0.9
    assert (ViewSchedule("shuffle", 4, seed=2).views_for(0, rows) != first[:, 0]).mean() > 0.5
    with pytest.raises(ValueError, match="view_schedule"):
        ViewSchedule("random", 4)
