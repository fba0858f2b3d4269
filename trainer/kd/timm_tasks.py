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

Calling: ``task(input, target, teacher_targets)`` with ``teacher_targets`` a batch's
``targets`` (``{teacher_name: {topk_logits, topk_index, logsumexp}}``, or one teacher's dict),
or ``task(input, batch)`` with the loader's batch dict as ``target`` (labels from ``label``,
mixed with ``mix_lam``/``mix_label`` for mixing plans, targets from ``targets``): the two-argument
call timm's loops make. The targets are moved to the input's device. A mixing plan's labels are
soft (B, C): give a criterion that takes them (timm's default ``nn.CrossEntropyLoss`` does;
``LabelSmoothingCrossEntropy``, from ``smoothing``, does not).
"""

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from timm.task import FeatureDistillationTask, TrainingTask, resolve_classification_loss
from timm.task.distillation import FeatureDistillationTrainableModule
from timm.utils import unwrap_model

from kdcache.trainer.kd.losses import soft_distillation
from kdcache.trainer.kd.modes import TAIL_MODES
from kdcache.trainer.kd.topk_tail import distillation_bins

TARGET_KEYS = ("topk_logits", "topk_index", "logsumexp")
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


class _CachedDistillationTask(TrainingTask):
    """What the cached tasks share: the student as ``trainable_module``, timm's criterion and
    weights, the teacher targets read from the batch; no teacher module."""

    def __init__(
        self,
        student_model: torch.nn.Module,
        *,
        teacher: str | None,
        criterion,
        criterion_kwargs: dict[str, Any] | None,
        distill_loss_weight: float | None,
        task_loss_weight: float | None,
        temperature: float,
        tail: str,
        num_classes: int | None,
        device: torch.device | None,
        dtype: torch.dtype | None,
        verbose: bool,
    ):
        super().__init__(device=device, dtype=dtype, verbose=verbose)
        if tail not in TAIL_MODES:
            raise ValueError(f"tail must be one of {TAIL_MODES}, got {tail!r}")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.trainable_module = student_model
        self.criterion = resolve_classification_loss(
            criterion, self.device, criterion_kwargs=criterion_kwargs
        )
        self.teacher_name = teacher
        self.temperature = temperature
        self.tail = tail
        self.num_classes = num_classes or unwrap_model(student_model).num_classes
        self.task_loss_weight, self.distill_loss_weight = loss_weights(
            task_loss_weight, distill_loss_weight
        )

    def prepare_distributed(self, device_ids: list | None = None, **ddp_kwargs):
        """Wrap the student in DDP (there is no teacher to leave out)."""
        from torch.nn.parallel import DistributedDataParallel

        self.trainable_module = DistributedDataParallel(
            self.trainable_module, device_ids=device_ids, **ddp_kwargs
        )
        return self

    def compile(self, backend: str = "inductor", mode: str | None = None, **compile_kwargs):
        """Compile the student; it is also the eval model (returned)."""
        self.trainable_module = torch.compile(
            self.trainable_module, backend=backend, mode=mode, **compile_kwargs
        )
        self.eval_model = self.trainable_module
        return self.trainable_module

    def split_target(
        self, target, teacher_targets: Mapping | None, device: torch.device
    ) -> tuple[torch.Tensor, Mapping]:
        """(labels on ``device``, one teacher's targets) from the call's arguments: labels and
        targets, or a :class:`kdcache.KDBatch` whose labels are already mixed for mixing plans."""
        if teacher_targets is None:
            if not hasattr(target, "teacher_targets"):
                raise TypeError(
                    f"{type(self).__name__} reads the teacher from the cache: call "
                    "task(input, labels, targets) or task(input, batch) with a kdcache.KDBatch"
                )
            target, teacher_targets = target.labels, target.teacher_targets
        if hasattr(teacher_targets, "as_dict"):  # one teacher's kdcache.Targets
            teacher_targets = teacher_targets.as_dict()
        if "topk_logits" not in teacher_targets and "features" not in teacher_targets:
            names = sorted(teacher_targets)
            name = self.teacher_name or (names[0] if len(names) == 1 else None)
            if name is None or name not in teacher_targets:
                raise ValueError(
                    f"teacher targets hold {names}; pass teacher=<one of them> "
                    "(ensembles: kdcache.trainer.kd.DistillationLoss)"
                )
            teacher_targets = teacher_targets[name]
            if hasattr(teacher_targets, "as_dict"):
                teacher_targets = teacher_targets.as_dict()
        return target.to(device, non_blocking=True), teacher_targets

    def soft_loss(self, logits: torch.Tensor, targets: Mapping) -> torch.Tensor:
        """timm's ``T^2 * KL(teacher || student)``, batchmean, from the cached targets."""
        device = logits.device
        topk_logits, topk_index, logsumexp = (
            targets[k].to(device, non_blocking=True) for k in TARGET_KEYS
        )
        bins = distillation_bins(
            logits, topk_logits, topk_index.long(), logsumexp, self.num_classes,
            self.temperature, self.tail,
        )  # fmt: skip
        return soft_distillation(*bins, self.temperature, "batchmean")


class CachedLogitDistillationTask(_CachedDistillationTask):
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
            raise ValueError(
                f"Unsupported loss_type '{loss_type}'. Currently only 'kl' is supported."
            )
        super().__init__(
            student_model,
            teacher=teacher,
            criterion=criterion,
            criterion_kwargs=criterion_kwargs,
            distill_loss_weight=distill_loss_weight,
            task_loss_weight=task_loss_weight,
            temperature=temperature,
            tail=tail,
            num_classes=num_classes,
            device=device,
            dtype=dtype,
            verbose=verbose,
        )
        self.loss_type = loss_type

    def forward(
        self, input: torch.Tensor, target, teacher_targets: Mapping | None = None
    ) -> dict[str, torch.Tensor]:
        target, teacher_targets = self.split_target(target, teacher_targets, input.device)
        student_logits = self.trainable_module(input)
        task_loss = self.criterion(student_logits, target)
        kd_loss = self.soft_loss(student_logits, teacher_targets)
        return {
            "loss": self.task_loss_weight * task_loss + self.distill_loss_weight * kd_loss,
            "output": student_logits,
            "task_loss": task_loss,
            "kd_loss": kd_loss,
        }


class CachedTokenDistillationTask(_CachedDistillationTask):
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
            raise ValueError(
                f"Model {student.__class__.__name__} does not have 'set_distilled_training' "
                "method. CachedTokenDistillationTask requires a model with a distillation head "
                "(e.g., DeiT distilled variants)."
            )
        if distill_type not in DISTILL_TYPES:
            raise ValueError(
                f"Unsupported distill_type '{distill_type}'. Must be 'soft' or 'hard'."
            )
        student.set_distilled_training(True)
        super().__init__(
            student_model,
            teacher=teacher,
            criterion=criterion,
            criterion_kwargs=criterion_kwargs,
            distill_loss_weight=distill_loss_weight,
            task_loss_weight=task_loss_weight,
            temperature=temperature,
            tail=tail,
            num_classes=num_classes,
            device=device,
            dtype=dtype,
            verbose=verbose,
        )
        self.distill_type = distill_type

    def forward(
        self, input: torch.Tensor, target, teacher_targets: Mapping | None = None
    ) -> dict[str, torch.Tensor]:
        target, teacher_targets = self.split_target(target, teacher_targets, input.device)
        main_logits, dist_logits = self.trainable_module(input)
        task_loss = self.criterion(main_logits, target)
        if self.distill_type == "soft":
            distill_loss = self.soft_loss(dist_logits, teacher_targets)
        else:
            top1 = teacher_targets["topk_index"][:, 0].to(dist_logits.device).long()
            distill_loss = F.cross_entropy(dist_logits, top1)
        return {
            "loss": self.task_loss_weight * task_loss + self.distill_loss_weight * distill_loss,
            "output": main_logits,
            "task_loss": task_loss,
            "distill_loss": distill_loss,
        }


class CachedFeatureDistillationTask(_CachedDistillationTask):
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
        super().__init__(
            student_model,
            teacher=teacher,
            criterion=criterion,
            criterion_kwargs=criterion_kwargs,
            distill_loss_weight=distill_loss_weight,
            task_loss_weight=task_loss_weight,
            temperature=1.0,
            tail="uniform",
            num_classes=None,
            device=device,
            dtype=dtype,
            verbose=verbose,
        )
        if student_feature_dim is None:
            student_feature_dim = FeatureDistillationTask._detect_feature_dim(student_model)
        projection = None
        if student_feature_dim != teacher_feature_dim:
            projection = torch.nn.Linear(
                student_feature_dim, teacher_feature_dim, device=self.device, dtype=self.dtype
            )
        self.trainable_module = FeatureDistillationTrainableModule(student_model, projection)
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

    def forward(
        self, input: torch.Tensor, target, teacher_targets: Mapping | None = None
    ) -> dict[str, torch.Tensor]:
        target, teacher_targets = self.split_target(target, teacher_targets, input.device)
        features = teacher_targets.get("features") or {}
        if self.feature not in features:
            raise ValueError(
                f"the teacher targets hold no feature {self.feature!r} (they hold "
                f"{sorted(features)}); teach the cache with --features {self.feature}"
            )
        student_logits, student_features = self.trainable_module(input)
        task_loss = self.criterion(student_logits, target)
        wanted = features[self.feature].to(student_features.device, non_blocking=True)
        kd_loss = F.mse_loss(student_features, wanted.to(student_features.dtype))
        return {
            "loss": self.task_loss_weight * task_loss + self.distill_loss_weight * kd_loss,
            "output": student_logits,
            "task_loss": task_loss,
            "kd_loss": kd_loss,
        }
