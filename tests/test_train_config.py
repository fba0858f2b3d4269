"""TrainConfig checks itself before any work (ConfigError naming the field, never a flag), its
plan is a ViewPlan (or the fields set), and trainer/ raises no bare ValueError nor names flags."""

import ast
import pathlib
import re

import pytest

from kdcache.errors import ConfigError
from kdcache.pipeline.views import ViewPlan
from kdcache.trainer.run import TrainConfig

ROOT = pathlib.Path(__file__).resolve().parents[1]
BASE = dict(manifest="data", out="run", model="resnet10t")


@pytest.mark.parametrize(
    ("options", "field", "words"),
    [
        ({"kd": "soft"}, "kd", "kd soft with teacher none"),
        ({"teacher": "cached", "kd": "soft"}, "cache", "teacher cached needs a cache"),
        ({"cache": "c.zarr"}, "kd", "teacher cached needs kd soft or hard"),
        ({"teacher": "online", "kd": "soft"}, "teacher_checkpoint", "teacher online needs"),
        ({"teacher": "online", "kd": "soft", "teacher_checkpoint": "t.pth", "cache": "c.zarr"},
         "cache", "cache holds cached targets"),
        ({"teacher": "online", "kd": "soft", "teacher_checkpoint": "t.pth",
          "targets": "sampled"}, "teacher", "targets sampled are for cached teachers"),
        ({"epochs": 0}, "epochs", "epochs must be at least 1"),
        ({"mixing": "label"}, "mixing", "it needs a cache"),
        ({"plan": {"view": 3}}, "plan", "no field 'view'"),
        ({"teacher": "elsewhere"}, "teacher", "teacher must be one of"),
    ],
)  # fmt: skip
def test_train_config_refuses_options_naming_the_field(options, field, words):
    with pytest.raises(ConfigError, match=words) as refused:
        TrainConfig(**BASE, **options).validate()
    assert refused.value.field == field
    assert "--" not in str(refused.value)


def test_plan_is_a_view_plan_or_the_fields_set():
    plan = ViewPlan(seed=3, views=2)
    fields = TrainConfig(**BASE, plan=plan).validate().plan_fields()
    assert ViewPlan(**fields) == plan
    assert TrainConfig(**BASE, plan={"views": 2}).plan_fields() == {"views": 2}
    assert TrainConfig(**BASE).plan_fields() == {}


def _raises(path: pathlib.Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
            yield node


def test_trainer_raises_typed_errors_whose_messages_name_no_flag():
    bare, flagged = [], []
    for path in sorted((ROOT / "trainer").rglob("*.py")):
        for node in _raises(path):
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            if getattr(node.exc.func, "id", None) == "ValueError":
                bare.append(where)
            texts = [
                n.value
                for arg in node.exc.args
                for n in ast.walk(arg)
                if isinstance(n, ast.Constant) and isinstance(n.value, str)
            ]
            if any(re.search(r"(^|\s|\()--[a-z]", text) for text in texts):
                flagged.append(where)
    assert not bare, f"bare ValueError raised at {bare}"
    assert not flagged, f"messages naming a --flag at {flagged}"
