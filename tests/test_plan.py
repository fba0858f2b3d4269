import numpy as np
import pytest

from kdcache.pipeline.views import CROP_FLIP_NAMES, ViewPlan


def test_same_inputs_give_same_params_in_any_order_or_subset():
    plan = ViewPlan(seed=7, views=4)
    rows = np.arange(1000)
    every = plan.params(rows, np.ones(1000))
    again = ViewPlan(seed=7, views=4).params(rows, np.ones(1000))
    np.testing.assert_array_equal(every, again)
    picked = np.array([999, 3, 500])
    alone = plan.params(picked, np.ones(3), views=[2])
    np.testing.assert_array_equal(alone[:, 0], every[picked, 2])


def test_seed_row_and_view_each_change_the_params():
    rows = np.arange(200)
    base = ViewPlan(seed=0, views=2).params(rows, np.ones(200))
    other_seed = ViewPlan(seed=1, views=2).params(rows, np.ones(200))
    assert (np.abs(base - other_seed)[..., :4] > 1e-6).mean() > 0.99
    assert (np.abs(base[:, 0] - base[:, 1])[..., :4] > 1e-6).mean() > 0.99
    assert (np.abs(base[:-1, 0] - base[1:, 0])[..., :4] > 1e-6).mean() > 0.99


def test_crops_follow_random_resized_crop_bounds():
    plan = ViewPlan(
        seed=0, views=4, crop_scale=(0.3, 0.9), crop_ratio=(0.75, 4 / 3), flip_prob=0.25
    )
    params = plan.params(np.arange(5000), np.ones(5000)).reshape(-1, len(CROP_FLIP_NAMES))
    top, left, height, width, flip = params.T
    area = height * width
    assert area.min() >= 0.3 - 1e-5 and area.max() <= 0.9 + 1e-5
    ratio = width / height
    assert ratio.min() >= 0.75 - 1e-4 and ratio.max() <= 4 / 3 + 1e-4
    assert (top >= 0).all() and (top + height <= 1 + 1e-6).all()
    assert (left >= 0).all() and (left + width <= 1 + 1e-6).all()
    assert set(np.unique(flip)) == {0.0, 1.0}
    assert abs(flip.mean() - 0.25) < 0.02


def test_wide_source_falls_back_to_centre_crop_within_ratio():
    # a 1x20 strip: no sampled crop fits, so torchvision's centre fallback applies
    plan = ViewPlan(crop_scale=(0.9, 1.0), crop_ratio=(0.75, 4 / 3))
    params = plan.params(np.arange(50), np.full(50, 1 / 20))
    top, left, height, width = params[..., 0], params[..., 1], params[..., 2], params[..., 3]
    np.testing.assert_allclose(height, 1.0)
    np.testing.assert_allclose(width * 20 / height, 4 / 3, rtol=1e-5)  # pixel ratio = max ratio
    np.testing.assert_allclose(left, (1 - width) / 2, rtol=1e-5)
    np.testing.assert_allclose(top, 0.0)


def test_attrs_round_trip_and_bad_plans_are_refused():
    plan = ViewPlan(seed=5, views=2, crop_scale=(0.5, 1.0))
    assert ViewPlan.from_attrs(plan.to_attrs()) == plan
    assert plan.differences(ViewPlan(seed=6, views=2, crop_scale=(0.5, 1.0))) == [
        "plan.seed: 5 vs 6"
    ]
    with pytest.raises(ValueError, match="crop_scale"):
        ViewPlan(crop_scale=(0.5, 1.5))
    with pytest.raises(ValueError, match="params_layout"):
        ViewPlan.from_attrs({**plan.to_attrs(), "params_layout": "other/9"})
