"""``kdcache bench kd --feature-rows``: logit, feature and attention KD from one ViT teacher.

A small timm ViT is trained here on the Fashion-MNIST slice and cached once with top-10 logits,
its ``pre_logits`` vector and the class token's attention of its last block (the same plan as
the other bench-kd rows). Then each student (a half-width ``resnet10t``, the ViT -> ResNet
row, and the DeiT student of the other rows) is trained with the same seed, views and budget:
no KD, soft KD from the logits, logits + features, logits + attention, logits + both, and the
no-KD seed noise.
Bytes per view come from the cache's own layout (``CacheStore.view_bytes``, what ``inspect``
prints), per stored target kind. Imports no torch until it runs.
"""

import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kdcache.tools.bench.harness import fresh

if TYPE_CHECKING:
    from kdcache.tools.bench.kd_objectives import BenchConfig

TEACHER = "vit"  # the ViT teacher's name in the cache
DEIT = "deit"  # the other bench-kd rows' student (BenchConfig.student)


@dataclass(frozen=True)
class FeatureCache:
    """The ViT teacher's figures, its cache and the stored bytes per view of each target."""

    teacher: dict
    seconds: dict[str, float]
    cache: str
    sizes: dict[str, float]


def feature_cache(out: str, config: "BenchConfig", common: dict, plan) -> FeatureCache:
    """Train the ViT teacher in ``out`` and cache its logits, features and attention once."""
    from kdcache.pipeline.cache import CacheStore
    from kdcache.pipeline.teach import TeachConfig, TeacherSource, run_teach
    from kdcache.trainer.run import TrainConfig, train

    run = fresh(os.path.join(out, "runs", f"teacher-{TEACHER}"))
    started = time.perf_counter()
    final = train(TrainConfig(out=run, model=config.vit_teacher, model_args=config.vit_teacher_args,
                              resolution=config.student_resolution, epochs=config.teacher_epochs,
                              lr=config.vit_teacher_lr, seed=config.seed, **common))  # fmt: skip
    seconds = {f"teacher {TEACHER}": round(time.perf_counter() - started, 1)}
    cache = fresh(os.path.join(out, "cache.zarr"))
    started = time.perf_counter()
    run_teach(TeachConfig(manifest=common["manifest"], cache=cache, plan=plan, topk=10,
                          teachers=[TeacherSource(os.path.join(run, "checkpoint.pth"),
                                                  name=TEACHER)],
                          features=config.feature_targets, attention=config.attention_targets,
                          progress=common["progress"]))  # fmt: skip
    seconds["teach"] = round(time.perf_counter() - started, 1)
    sizes = {k: round(v, 1) for k, v in CacheStore.open(cache).view_bytes(TEACHER).items()}
    teacher = {"arch": config.vit_teacher, "args": config.vit_teacher_args,
               "test_acc": round(final["test_acc"], 2)}  # fmt: skip
    return FeatureCache(teacher, seconds, cache, sizes)


def attention_names(config: "BenchConfig") -> list[str]:
    """The cache's names of the attention targets (``attention:BLOCK:POOL``)."""
    return [f"attention:{a}" for a in config.attention_targets]


def feature_runs(config: "BenchConfig", sizes: dict[str, float]) -> list[tuple[str, float, dict]]:
    """(label, bytes per view read, TrainConfig options) of every student run, per student:
    no KD, soft KD on the logits, + features, + attention, + both, and the no-KD seed noise."""
    features, attention = tuple(config.feature_targets), tuple(config.attention_targets)
    feature_bytes = sum(sizes[name] for name in features)
    attention_bytes = sum(sizes[name] for name in attention_names(config))
    logits = {"kd": "soft", "teachers": [TEACHER]}
    kinds = [
        ("soft KD, logits (top-10)", 0.0, {}),
        (f"logits + features ({', '.join(features)})", feature_bytes,
         {"feature_weight": config.feature_weight, "features": features}),
        (f"logits + attention ({', '.join(attention)})", attention_bytes,
         {"attention_weight": config.attention_weight, "attention": attention}),
        ("logits + features + attention", feature_bytes + attention_bytes,
         {"feature_weight": config.feature_weight, "attention_weight": config.attention_weight,
          "features": features, "attention": attention}),
    ]  # fmt: skip
    losses = {"feature_loss": config.feature_loss, "attention_loss": config.attention_loss}
    runs = []
    for student in config.feature_students:
        model = _student(config, student)
        runs.append((f"{student}: no KD", 0.0, {"kd": "none", **model}))
        for label, extra, options in kinds:
            size = round(sizes["topk"] + extra, 1)
            if "attention" in options:
                options = {**options, "student_layers": _attention_layers(config, student)}
            runs.append((f"{student}: {label}", size, {**logits, **model, **losses, **options}))
        if config.noise_seed is not None:
            runs.append((f"{student}: no KD, training seed {config.noise_seed}", 0.0,
                         {"kd": "none", "seed": config.noise_seed, **model}))  # fmt: skip
    return runs


def _student(config: "BenchConfig", student: str) -> dict:
    """The TrainConfig options naming a student: its model and args."""
    if student == DEIT:
        return {"model": config.student, "model_args": config.student_args}
    return {"model": student, "model_args": config.resnet_args}


def _attention_layers(config: "BenchConfig", student: str) -> dict[str, str]:
    """The student layer every attention target is learnt from (``config.attention_layers``)."""
    return {name: config.attention_layers[student] for name in attention_names(config)}
