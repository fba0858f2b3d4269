"""Cached distillation behind timm's ``timm.task`` contract: ``LogitDistillationTask``,
``TokenDistillationTask`` and ``FeatureDistillationTask`` with the teacher forward replaced by
kdcache's cached targets.

timm 1.0.31's tasks run the teacher on every step (online KD). These classes keep timm's
``TrainingTask`` interface (the same forward, the same returned keys, ``prepare_distributed``,
``compile``, ``trainable_module``, ``setup_ema``/``update_ema``/``get_eval_model``, checkpoint
state) and timm's loss formulas and weighting exactly, but read the teacher's distribution from
a kdcache batch's ``targets`` (top-k logits, class ids and logsumexp of the teacher on the very
view the student sees):

* :class:`CachedLogitDistillationTask` (timm ``LogitDistillationTask``; one head)::

      loss = task_loss_weight * criterion(z_s, y)
           + distill_loss_weight * T^2 * KL(softmax(z_t / T) || softmax(z_s / T))   # kd_loss

* :class:`CachedTokenDistillationTask` (timm ``TokenDistillationTask``; DeiT's distillation
  token): the class head takes ``criterion(z_cls, y)``, the distillation head the teacher term,
  ``soft`` as above on ``z_dist``, or ``hard``: ``CE(z_dist, argmax z_t)`` (``distill_loss``).

KL reduction as timm's: ``batchmean`` (sum over classes, mean over the batch), times ``T^2``.
The KL is kdcache's own (:func:`~trainer.topk_tail.distillation_bins` then
:func:`~trainer.losses.soft_distillation`), which at ``batchmean`` is timm's formula; it runs
in fp32 (timm's in the logits' dtype). ``argmax z_t`` is the cache's top-1 class id, the argmax
of the teacher's fp32 logits (the cache rounds the top-k *values* to fp16, never the order).
With K = C (a cache holding all classes) the targets are the teacher's full logits and the
losses are timm's online ones (tests/test_timm_tasks.py: to 1e-5, on fp16-exact logits); with
K < C the teacher distribution is rebuilt by ``tail`` (default ``uniform``: exact top-k, the
exact tail mass spread evenly over the other classes; see :mod:`trainer.topk_tail`).

Weights follow timm's three modes: ``distill_loss_weight`` given: independent weights
(``task_loss_weight`` default 1); only ``task_loss_weight``: ``distill = 1 - task``; neither:
both 1.

kdcache ``train --alpha A --tau T`` in timm's terms (``kdcache train`` uses
:class:`~trainer.losses.DistillationLoss`: ``(1 - A) * CE + A * KD``)::

    task_loss_weight = 1 - A      distill_loss_weight = A      temperature = T

(or timm's complementary mode, ``task_loss_weight = 1 - A`` alone). This holds for ``--kd
soft`` with the default ``--kl-reduction batchmean`` (with ``deit`` kdcache also divides the
KL by C: ``distill_loss_weight = A / C``), for a one-head student (the logit task) and for a
DeiT student (the token task, class head on labels, distillation head on the teacher), and for
``--kd hard`` on a DeiT student (``distill_type='hard'``; T unused). ``--label-smoothing S``
is ``criterion_kwargs=dict(smoothing=S)``. timm's default, neither weight given, is 1 and 1: no
``--alpha`` gives it (``A = 1/2`` is half of it). kdcache's ``--kd hard`` on a one-head
student has no timm task.

* :class:`CachedFeatureDistillationTask` (timm ``FeatureDistillationTask``): the student's
  pooled pre-logits, through a linear projection when its size differs from the teacher's,
  against the cache's ``pre_logits`` feature target (``teach --features pre_logits``, which is
  timm's teacher ``forward_head(forward_features(x), pre_logits=True)`` on the same view)::

      loss = task_loss_weight * criterion(z_s, y) + distill_loss_weight * MSE(proj(f_s), f_t)

  The student and projection are timm's own ``FeatureDistillationTrainableModule``; its
  ``projection`` is the task state timm checkpoints. The teacher's normalisation does not
  arise: the cache's teacher saw the view with its own.

Each is a :class:`~trainer.kd.task.KDTask` (the step ``kdcache train`` runs) with timm's
criterion, weights and result keys. Calling: ``task(input, target, teacher_targets)`` with
``teacher_targets`` a batch's ``targets`` (``{teacher_name: {topk_logits, topk_index,
logsumexp}}``, or one teacher's dict), or ``task(input, batch)`` with a :class:`kdcache.KDBatch`
as ``target`` (its labels, mixed for mixing plans, and its targets): the two-argument call
timm's loops make. The targets are moved to the input's device. A mixing plan's labels are
soft (B, C): give a criterion that takes them (timm's default ``nn.CrossEntropyLoss`` does;
``LabelSmoothingCrossEntropy``, from ``smoothing``, does not).
"""

from typing import Any

import torch
import torch.nn.functional as F
from timm.task import FeatureDistillationTask, TrainingTask, resolve_classification_loss
from timm.task.distillation import FeatureDistillationTrainableModule
from timm.utils import unwrap_model

from kdcache.errors import ConfigError
from kdcache.trainer.kd.losses import DistillationLoss
from kdcache.trainer.kd.task import KDTask

DISTILL_TYPES = ("soft", "hard")


def loss_weights(
    task_loss_weight: float | None, distill_loss_weight: float | None
) -> tuple[float, float]:
    """(task, distill) weights by timm's rule: independent when ``distill_loss_weight`` is
    given (task default 1), complementary when only ``task_loss_weight`` is, else 1 and 1."""
    if distill_loss_weight is not None:
        return (1.0 if task_loss_weight is None else task_loss_weight), distill_loss_weight
    if task_loss_weight is not None:
        return task_loss_weight, 1.0 - task_loss_weight
    return 1.0, 1.0


def from_alpha_tau(alpha: float, tau: float = 1.0) -> dict[str, float]:
    """The task arguments equal to kdcache's ``--alpha``/``--tau`` (batchmean KL)."""
    return {"task_loss_weight": 1.0 - alpha, "distill_loss_weight": alpha, "temperature": tau}


class _CachedTask(KDTask):
    """A :class:`KDTask` configured as a timm task: timm's criterion and weight modes, one
    cached teacher (named, or the batch's only one), timm's result keys."""

    def __init__(self, student_model, kd: str, kd_key: str, options: dict, **weights):
        device = options.get("device")
        criterion = resolve_classification_loss(
            options.get("criterion"), device or torch.device("cpu"),
            criterion_kwargs=options.get("criterion_kwargs"),
        )  # fmt: skip
        task_w, distill_w = loss_weights(
            options.get("task_loss_weight"), options.get("distill_loss_weight")
        )
        temperature = options.get("temperature", 1.0)
        if temperature <= 0:
            raise ConfigError(f"temperature must be positive, got {temperature}", field="tau")
        loss = DistillationLoss(
            kd, options.get("num_classes") or unwrap_model(student_model).num_classes,
            tau=temperature, tail=options.get("tail", "uniform"), criterion=criterion,
            weights=(task_w, distill_w), **weights,
        )  # fmt: skip
        super().__init__(
            student_model, loss, teacher_name=options.get("teacher"), one_teacher=True,
            part_names={"ce": "task_loss", "kd": kd_key}, device=device,
            dtype=options.get("dtype"), verbose=options.get("verbose", True),
        )  # fmt: skip
        self.task_loss_weight, self.distill_loss_weight = task_w, distill_w
        self.temperature, self.tail = temperature, loss.tail
        self.num_classes, self.teacher_name = loss.num_classes, options.get("teacher")


class CachedLogitDistillationTask(_CachedTask):
    """timm's ``LogitDistillationTask`` on cached teacher logits (one-head student).

    Args as timm's, without the teacher model: ``teacher`` names the cached teacher to read
    (default: the batch's only one), ``tail`` rebuilds a top-K < C teacher distribution,
    ``num_classes`` defaults to the student's. Returns ``loss``, ``output`` (student logits),
    ``task_loss`` and ``kd_loss``.
    """

    def __init__(
        self,
        student_model: torch.nn.Module,
        teacher: str | None = None,
        criterion=None,
        criterion_kwargs: dict[str, Any] | None = None,
        loss_type: str = "kl",
        distill_loss_weight: float | None = None,
        task_loss_weight: float | None = None,
        temperature: float = 1.0,
        tail: str = "uniform",
        num_classes: int | None = None,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
        verbose: bool = True,
    ):
        if loss_type != "kl":
            raise ConfigError(
                f"Unsupported loss_type '{loss_type}'. Currently only 'kl' is supported.",
                field="loss_type",
            )
        options = {k: v for k, v in locals().items() if k not in ("self", "student_model")}
        super().__init__(student_model, "soft", "kd_loss", options)
        self.loss_type = loss_type


class CachedTokenDistillationTask(_CachedTask):
    """timm's ``TokenDistillationTask`` on cached teacher logits (a student with a
    distillation head, e.g. DeiT distilled: ``set_distilled_training(True)`` is called).

    ``distill_type`` ``soft`` (KL at ``temperature``) or ``hard`` (CE on the teacher's top-1).
    Returns ``loss``, ``output`` (class-head logits), ``task_loss`` and ``distill_loss``.
    """

    def __init__(
        self,
        student_model: torch.nn.Module,
        teacher: str | None = None,
        criterion=None,
        criterion_kwargs: dict[str, Any] | None = None,
        distill_type: str = "soft",
        distill_loss_weight: float | None = None,
        task_loss_weight: float | None = None,
        temperature: float = 1.0,
        tail: str = "uniform",
        num_classes: int | None = None,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
        verbose: bool = True,
    ):
        student = unwrap_model(student_model)
        if not hasattr(student, "set_distilled_training"):
            raise ConfigError(
                f"Model {student.__class__.__name__} does not have 'set_distilled_training' "
                "method. CachedTokenDistillationTask requires a model with a distillation head "
                "(e.g., DeiT distilled variants).",
                field="model",
            )
        if distill_type not in DISTILL_TYPES:
            raise ConfigError(
                f"Unsupported distill_type '{distill_type}'. Must be 'soft' or 'hard'.",
                field="distill_type",
            )
        student.set_distilled_training(True)
        options = {k: v for k, v in locals().items() if k not in ("self", "student_model")}
        super().__init__(student_model, distill_type, "distill_loss", options)
        self.distill_type = distill_type


class FeatureMatchLoss(torch.nn.Module):
    """timm's feature distillation loss on a student giving (logits, projected features):
    ``task_w * criterion(logits, y) + distill_w * MSE(features, the teacher's feature)``."""

    def __init__(self, criterion, feature: str, weights: tuple[float, float]):
        super().__init__()
        self.criterion, self.feature, self.weights = criterion, feature, weights
        self.parts: dict[str, torch.Tensor] = {}

    def forward(self, outputs, labels: torch.Tensor, targets: dict) -> torch.Tensor:
        logits, student_features = outputs
        features = next(iter(targets.values())).get("features") or {}
        if self.feature not in features:
            raise ConfigError(
                f"the teacher targets hold no feature {self.feature!r} (they hold "
                f"{sorted(features)}); teach the cache with features {self.feature}",
                field="features",
            )
        task_loss = self.criterion(logits, labels)
        wanted = features[self.feature].to(student_features.dtype)
        kd_loss = F.mse_loss(student_features, wanted)
        self.parts = {"ce": task_loss.detach(), "kd": kd_loss.detach()}
        return self.weights[0] * task_loss + self.weights[1] * kd_loss


class CachedFeatureDistillationTask(KDTask):
    """timm's ``FeatureDistillationTask`` on a cached feature target (default
    ``pre_logits``; see the module's docstring).

    Args as timm's, without the teacher model: ``teacher`` names the cached teacher (default:
    the batch's only one), ``feature`` the target; ``teacher_feature_dim`` is the target's size
    (required: the cache's ``shape``; ``CachedTargets.feature_targets`` lists them). Returns
    ``loss``, ``output`` (student logits), ``task_loss`` and ``kd_loss``.
    """

    get_task_state = FeatureDistillationTask.get_task_state
    load_task_state = FeatureDistillationTask.load_task_state
    get_clip_parameters = FeatureDistillationTask.get_clip_parameters

    def __init__(
        self,
        student_model: torch.nn.Module,
        teacher_feature_dim: int,
        teacher: str | None = None,
        feature: str = "pre_logits",
        criterion=None,
        criterion_kwargs: dict[str, Any] | None = None,
        distill_loss_weight: float | None = None,
        task_loss_weight: float | None = None,
        student_feature_dim: int | None = None,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
        verbose: bool = True,
    ):
        resolved = resolve_classification_loss(
            criterion, device or torch.device("cpu"), criterion_kwargs=criterion_kwargs
        )
        weights = loss_weights(task_loss_weight, distill_loss_weight)
        if student_feature_dim is None:
            student_feature_dim = FeatureDistillationTask._detect_feature_dim(student_model)
        projection = None
        if student_feature_dim != teacher_feature_dim:
            projection = torch.nn.Linear(
                student_feature_dim, teacher_feature_dim, device=device, dtype=dtype
            )
        super().__init__(
            FeatureDistillationTrainableModule(student_model, projection),
            FeatureMatchLoss(resolved, feature, weights),
            teacher_name=teacher, one_teacher=True,
            part_names={"ce": "task_loss", "kd": "kd_loss"},
            device=device, dtype=dtype, verbose=verbose,
        )  # fmt: skip
        self.task_loss_weight, self.distill_loss_weight = weights
        self.feature = feature

    def compile(self, backend: str = "inductor", mode: str | None = None, **compile_kwargs):
        """Compile the student (the eval model, returned) and the trainable module."""
        student = self.trainable_module.student
        self.eval_model = torch.compile(student, backend=backend, mode=mode, **compile_kwargs)
        self.trainable_module = torch.compile(
            self.trainable_module, backend=backend, mode=mode, **compile_kwargs
        )
        return self.eval_model

    def get_eval_model(self, module: torch.nn.Module | None = None, ema: bool = False):
        """The student alone (without the projection), as timm's task gives it."""
        resolved = TrainingTask.get_eval_model(self, module=module, ema=ema)
        current = resolved
        while current is not None:
            if isinstance(current, FeatureDistillationTrainableModule):
                return current.student
            current = getattr(current, "module", None)
        return resolved
