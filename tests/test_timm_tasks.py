"""The cached timm tasks: timm's online tasks' losses on the same outputs and teacher logits
(K = C), kdcache's --alpha/--tau in timm's weights, timm's TrainingTask contract, and the
example training with timm's pieces from a real cache."""

import os
import pathlib
import re
import subprocess
import sys

import pytest
import timm
import torch
from timm.task import DistillationTeacher, LogitDistillationTask, TokenDistillationTask
from timm.utils import ModelEmaV3

from kdcache.pipeline.cache import reduce_logits
from kdcache.trainer.data import KDBatch, Targets
from kdcache.trainer.kd import (
    CachedLogitDistillationTask,
    CachedTokenDistillationTask,
    DistillationLoss,
    from_alpha_tau,
)

ROOT = pathlib.Path(__file__).resolve().parents[1]
B, C = 16, 10
TEMPERATURES = (0.5, 1.0, 2.0, 4.0)
WEIGHTS = [  # (task_loss_weight, distill_loss_weight): timm's three modes
    (None, None),
    (0.3, None),
    (None, 0.7),
    (0.5, 2.0),
    (0.0, 1.0),
]


class FixedStudent(torch.nn.Module):
    """A "model" whose outputs are its parameters: one head, or (class, distillation) heads."""

    def __init__(self, *outputs: torch.Tensor):
        super().__init__()
        self.heads = torch.nn.ParameterList([torch.nn.Parameter(o.clone()) for o in outputs])
        self.num_classes, self.in_chans = outputs[0].shape[-1], 1
        self.pretrained_cfg = {"mean": (0.5,), "std": (0.25,)}
        self.distilled_training = False

    def set_distilled_training(self, enable: bool = True) -> None:
        self.distilled_training = enable

    def forward(self, x):
        outputs = tuple(h * 1 for h in self.heads)
        return outputs if len(outputs) > 1 else outputs[0]


class FixedTeacher(torch.nn.Module):
    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.register_buffer("logits", logits)

    def forward(self, x):
        return self.logits


def cached_targets(teacher_logits: torch.Tensor, k: int = C) -> dict[str, torch.Tensor]:
    """The targets a cache holds for these logits: reduce_logits, top-k values as fp16."""
    values, index, lse = reduce_logits(teacher_logits, k)
    return {"topk_logits": values.half().float(), "topk_index": index, "logsumexp": lse}


def outputs(seed: int, heads: int, fp16_exact: bool):
    gen = torch.Generator().manual_seed(seed)
    student = [torch.randn(B, C, generator=gen) * 3 for _ in range(heads)]
    teacher = torch.randn(B, C, generator=gen) * 4
    if fp16_exact:
        teacher = teacher.half().float()
    labels = torch.randint(0, C, (B,), generator=gen)
    return student, teacher, labels


def run(task, student, *args):
    result = task(torch.zeros(B, 1, 4, 4), *args)
    result["loss"].backward()
    return result, [p.grad for p in student.parameters()]


def assert_same(cached, online, key):
    (ours, our_grads), (theirs, their_grads) = cached, online
    assert set(ours) == set(theirs) == {"loss", "output", "task_loss", key}
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], rtol=0, atol=1e-5)
    for g, h in zip(our_grads, their_grads, strict=True):
        torch.testing.assert_close(g, h, rtol=0, atol=1e-5)


@pytest.mark.parametrize("fp16_exact", [True, False])
@pytest.mark.parametrize("temperature", TEMPERATURES)
@pytest.mark.parametrize("weights", WEIGHTS)
def test_logit_task_gives_timms_online_loss(weights, temperature, fp16_exact):
    """fp16_exact: teacher logits exact in fp16; else timm is fed the logits rounded as cached."""
    student, teacher, labels = outputs(1, 1, fp16_exact)
    options = dict(task_loss_weight=weights[0], distill_loss_weight=weights[1],
                   temperature=temperature, verbose=False)  # fmt: skip
    ours = FixedStudent(*student)
    cached = run(
        CachedLogitDistillationTask(ours, **options), ours, labels, cached_targets(teacher)
    )
    theirs = FixedStudent(*student)
    online_task = LogitDistillationTask(
        theirs, DistillationTeacher(FixedTeacher(teacher.half().float())), **options
    )
    assert_same(cached, run(online_task, theirs, labels), "kd_loss")


@pytest.mark.parametrize("distill_type", ["soft", "hard"])
@pytest.mark.parametrize("temperature", TEMPERATURES)
@pytest.mark.parametrize("weights", WEIGHTS)
def test_token_task_gives_timms_online_loss(weights, temperature, distill_type):
    student, teacher, labels = outputs(2, 2, fp16_exact=True)
    options = dict(task_loss_weight=weights[0], distill_loss_weight=weights[1],
                   temperature=temperature, distill_type=distill_type, verbose=False)  # fmt: skip
    ours = FixedStudent(*student)
    cached_task = CachedTokenDistillationTask(ours, **options)
    assert ours.distilled_training
    cached = run(cached_task, ours, labels, {"regnet": cached_targets(teacher)})
    theirs = FixedStudent(*student)
    online_task = TokenDistillationTask(
        theirs, DistillationTeacher(FixedTeacher(teacher)), **options
    )
    assert_same(cached, run(online_task, theirs, labels), "distill_loss")


@pytest.mark.parametrize("k", [4, C])
@pytest.mark.parametrize("tau", [1.0, 3.0])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 1.0])
def test_alpha_tau_map_to_timms_weights(alpha, tau, k):
    """kdcache's DistillationLoss(alpha, tau) equals the tasks given from_alpha_tau(alpha, tau),
    at any K (same tail), label smoothing included; one head, and DeiT's two heads soft and hard."""
    student, teacher, labels = outputs(3, 2, fp16_exact=False)
    targets = {"regnet": cached_targets(teacher, k)}
    options = dict(**from_alpha_tau(alpha, tau), criterion_kwargs={"smoothing": 0.1}, verbose=False)
    for kd, task, heads in (
        ("soft", CachedLogitDistillationTask, student[:1]),
        ("soft", CachedTokenDistillationTask, student),
        ("hard", CachedTokenDistillationTask, student),
    ):
        extra = {"distill_type": kd} if task is CachedTokenDistillationTask else {}
        result = task(FixedStudent(*heads), **options, **extra)(torch.zeros(B), labels, targets)
        loss = DistillationLoss(kd, C, alpha=alpha, tau=tau, label_smoothing=0.1)
        expected = loss(heads[0] if len(heads) == 1 else tuple(heads), labels, targets)
        torch.testing.assert_close(result["loss"], expected, rtol=0, atol=1e-5)


def test_batch_as_target_picks_the_teacher_and_mixes_labels():
    student, teacher, labels = outputs(4, 1, fp16_exact=True)
    targets = cached_targets(teacher, 4)
    task = CachedLogitDistillationTask(FixedStudent(*student), verbose=False)
    x = torch.zeros(B)
    three = task(x, labels, {"a": targets})
    two = task(x, _batch(labels, {"a": targets}))
    assert {k: v.item() for k, v in three.items() if k != "output"} == {
        k: v.item() for k, v in two.items() if k != "output"
    }
    assert task(x, labels, targets)["loss"].item() == three["loss"].item()  # one teacher's dict
    with pytest.raises(ValueError, match="pass teacher="):
        task(x, labels, {"a": targets, "b": targets})
    named = CachedLogitDistillationTask(FixedStudent(*student), teacher="b", verbose=False)
    other = dict(targets, topk_logits=targets["topk_logits"] + 1)
    assert named(x, labels, {"a": other, "b": targets})["loss"].item() == three["loss"].item()
    with pytest.raises(TypeError, match="reads the teacher from the cache"):
        task(x, labels)
    # a mixing plan's batch: labels lam * y_a + (1 - lam) * y_b, one teacher's Targets
    lam = torch.rand(B)
    partner = torch.randint(0, C, (B,))
    soft = lam[:, None] * torch.eye(C)[labels] + (1 - lam[:, None]) * torch.eye(C)[partner]
    mixed = _batch(soft, {"a": Targets(**targets)})
    torch.testing.assert_close(task(x, mixed)["task_loss"], task(x, soft, targets)["task_loss"])


def _batch(labels: torch.Tensor, teacher_targets: dict) -> KDBatch:
    none = torch.zeros(len(labels), dtype=torch.long)
    return KDBatch(torch.zeros(len(labels)), labels, teacher_targets, none, none, none.bool())


def test_contract_compile_ema_checkpoint_and_refusals():
    student, teacher, labels = outputs(5, 1, fp16_exact=True)
    targets = cached_targets(teacher)
    task = CachedLogitDistillationTask(FixedStudent(*student), verbose=False)
    module = task.get_trainable_module()
    assert isinstance(module, FixedStudent) and task.get_eval_model() is module
    before = task(torch.zeros(B), labels, targets)["loss"].item()
    ema = task.setup_ema(decay=0.5)
    assert isinstance(ema, ModelEmaV3) and task.has_ema() and task.get_eval_model(ema=True) is ema
    with torch.no_grad():
        module.heads[0].add_(1.0)
    task.update_ema()  # step None: the decay itself (timm: 0 at step 1)
    torch.testing.assert_close(ema.module.heads[0], student[0] + 0.5)
    state = task.get_checkpoint_state(ema=True)
    assert list(state) == ["state_dict_ema"]
    compiled = task.compile(backend="eager")
    assert compiled is task.trainable_module is task.get_eval_model()
    assert compiled is not module
    torch.testing.assert_close(task(torch.zeros(B), labels, targets)["output"], student[0] + 1)
    with torch.no_grad():
        module.heads[0].sub_(1.0)
    assert task(torch.zeros(B), labels, targets)["loss"].item() == pytest.approx(before, abs=1e-6)
    with pytest.raises(ValueError, match="set_distilled_training"):
        CachedTokenDistillationTask(timm.create_model("resnet10t", num_classes=C), verbose=False)
    with pytest.raises(ValueError, match="distill_type"):
        CachedTokenDistillationTask(FixedStudent(*student), distill_type="x", verbose=False)
    with pytest.raises(ValueError, match="loss_type"):
        CachedLogitDistillationTask(FixedStudent(*student), loss_type="mse", verbose=False)
    with pytest.raises(ValueError, match="tail"):
        CachedLogitDistillationTask(FixedStudent(*student), tail="x", verbose=False)


def test_prepare_distributed_wraps_the_student_in_ddp(tmp_path):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    student, teacher, labels = outputs(6, 1, fp16_exact=True)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        task = CachedLogitDistillationTask(FixedStudent(*student), verbose=False)
        assert task.prepare_distributed() is task
        assert isinstance(task.get_trainable_module(), DistributedDataParallel)
        result = task(torch.zeros(B), labels, cached_targets(teacher))
        result["loss"].backward()
        with task.no_sync():
            pass
        assert task.get_trainable_module().module.heads[0].grad is not None
    finally:
        dist.destroy_process_group()


def test_token_task_trains_a_real_deit_student():
    torch.manual_seed(0)
    model = timm.create_model(
        "deit_tiny_distilled_patch16_224", num_classes=C, in_chans=1, img_size=16,
        patch_size=8, embed_dim=32, depth=1, num_heads=2,
    )  # fmt: skip
    task = CachedTokenDistillationTask(model, distill_type="soft", temperature=2.0, verbose=False)
    task.train()
    images, labels = torch.randn(B, 1, 16, 16), torch.randint(0, C, (B,))
    targets = {"t": cached_targets(torch.randn(B, C) * 3, 4)}
    optimizer = torch.optim.SGD(task.get_trainable_module().parameters(), lr=0.1)
    losses = []
    for _ in range(5):
        result = task(images, labels, targets)
        assert result["output"].shape == (B, C)
        optimizer.zero_grad()
        result["loss"].backward()
        optimizer.step()
        losses.append(result["loss"].item())
    assert losses[-1] < losses[0]


def run_example(data, cache, *options) -> list[float]:
    command = [sys.executable, str(ROOT / "examples" / "timm_train.py"), "--data",
               data.location, "--cache", cache, *options]  # fmt: skip
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=600, cwd=ROOT, env=os.environ.copy()
    )
    assert result.returncode == 0, result.stderr[-3000:]
    print(result.stdout)
    assert "test accuracy: student" in result.stdout
    return [float(v) for v in re.findall(r"^epoch \d+/\d+ loss ([\d.]+)", result.stdout, re.M)]


@pytest.mark.parametrize(
    "options",
    [
        ["--model", "resnet10t", "--resolution", "32", "--epochs", "3", "--tau", "2"],
        [
            "--distill", "token", "--distill-type", "hard", "--epochs", "3",
            "--model", "deit_tiny_distilled_patch16_224", "--model-kwargs",
            '{"img_size": 28, "patch_size": 7, "embed_dim": 64, "depth": 2, "num_heads": 2}',
        ],
    ],
    ids=["logit-resnet", "token-hard-deit"],
)  # fmt: skip
def test_example_trains_with_timms_pieces_from_a_real_cache(data, cache, options):
    losses = run_example(data, cache, *options)
    assert len(losses) == 3
    assert losses[-1] < losses[0], losses


def test_kdcache_train_and_the_timm_tasks_run_one_step():
    """The cached timm tasks are KDTask configurations (one forward), and KDTask with an online
    teacher gives the loss of the same targets given as cached ones."""
    from kdcache.trainer.kd import CachedFeatureDistillationTask, KDTask

    for task in (CachedLogitDistillationTask, CachedTokenDistillationTask,
                 CachedFeatureDistillationTask):  # fmt: skip
        assert issubclass(task, KDTask) and task.forward is KDTask.forward
    student, teacher, labels = outputs(7, 1, fp16_exact=True)
    targets = cached_targets(teacher, 4)
    seen = []

    def online(images):
        seen.append(images)
        return targets

    loss = DistillationLoss("soft", C, alpha=0.3, tau=2.0)
    x, teacher_x = torch.zeros(B, 1, 4, 4), torch.ones(B, 1, 8, 8)
    ran = KDTask(FixedStudent(*student), loss, teacher=online)(
        x, labels, {}, teacher_input=teacher_x
    )
    cached = KDTask(FixedStudent(*student), loss)(x, labels, {"t": targets})
    assert seen[0] is teacher_x and set(ran) == {"loss", "output", "ce", "kd"}
    for key in ("loss", "ce", "kd"):
        torch.testing.assert_close(ran[key], cached[key], rtol=0, atol=0)
    torch.testing.assert_close(cached["loss"], loss(student[0], labels, {"t": targets}))
