"""One distillation step behind timm's ``TrainingTask`` contract: ``kdcache train`` runs it, and
so do timm loops (the cached timm tasks of :mod:`trainer.kd.timm_tasks` are configurations of it).

``task(input, target, teacher_targets)`` returns ``{"loss", "output", *parts}``: the student's
forward (bf16 autocast with ``amp``), the criterion on its outputs, the labels and the teacher
targets (cached ones from the batch, or an online teacher's on ``teacher_input``), plus the
feature and attention alignment terms when an alignment is given. ``target`` may also be a
:class:`kdcache.KDBatch` (timm's two-argument call): labels and targets come from it.
"""

import contextlib
from collections.abc import Callable, Mapping

import torch
from timm.task import TrainingTask
from timm.utils import unwrap_model

from kdcache.errors import ConfigError


class KDTask(TrainingTask):
    """A student, its criterion, an optional online teacher and feature alignment.

    ``criterion(outputs, labels, targets)`` returns the loss and sets ``criterion.parts``
    (:class:`~trainer.kd.losses.DistillationLoss`); ``targets`` maps teacher names to dicts of
    tensors. ``teacher``: a callable giving one teacher's targets for a batch of images (an
    online teacher), used instead of the cached ones. ``alignment``: a
    :class:`~trainer.kd.feature_losses.FeatureAlignment`, weighted by ``feature_weight`` and
    ``attention_weight``. ``teacher_name``: read only that cached teacher; ``one_teacher``:
    refuse targets of several teachers unless one is named. ``part_names`` renames the
    criterion's parts in the result (timm's ``task_loss``, ``kd_loss``).
    """

    def __init__(
        self,
        student: torch.nn.Module,
        criterion: torch.nn.Module,
        *,
        teacher: Callable | None = None,
        alignment: torch.nn.Module | None = None,
        feature_weight: float = 0.0,
        attention_weight: float = 0.0,
        teacher_name: str | None = None,
        one_teacher: bool = False,
        part_names: Mapping[str, str] | None = None,
        amp: bool = False,
        channels_last: bool = False,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
        verbose: bool = True,
    ):
        super().__init__(device=device, dtype=dtype, verbose=verbose)
        self.trainable_module, self.criterion = student, criterion
        self.teacher, self.alignment = teacher, alignment
        self.feature_weight, self.attention_weight = feature_weight, attention_weight
        self.teacher_name, self.one_teacher = teacher_name, one_teacher
        self.part_names = dict(part_names or {})
        self.amp, self.channels_last = amp, channels_last

    def forward(
        self,
        input: torch.Tensor,
        target,
        teacher_targets: Mapping | None = None,
        teacher_input: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """The step's loss, the student's (class-head) logits and the loss parts."""
        labels, targets = self.split_target(target, teacher_targets, input.device)
        if self.teacher is not None:
            targets = {"online": self.teacher(input if teacher_input is None else teacher_input)}
        if self.channels_last:
            input = input.contiguous(memory_format=torch.channels_last)
        student = unwrap_model(self.trainable_module)
        taps = self.alignment.taps(student) if self.alignment is not None else None
        with (
            torch.autocast(input.device.type, dtype=torch.bfloat16, enabled=self.amp),
            taps or contextlib.nullcontext(),
        ):
            outputs = self.trainable_module(input)
        loss, parts = self.criterion(outputs, labels, targets), dict(self.criterion.parts)
        if taps is not None:
            feat, attn = self.alignment(taps.collect(), next(iter(targets.values()))["features"])
            loss = loss + self.feature_weight * feat + self.attention_weight * attn
            parts |= {"feat": feat.detach(), "attn": attn.detach()}
        output = outputs[0] if isinstance(outputs, tuple) else outputs
        named = {self.part_names.get(k, k): v for k, v in parts.items()}
        return {"loss": loss, "output": output, **named}

    def split_target(
        self, target, teacher_targets: Mapping | None, device: torch.device
    ) -> tuple[torch.Tensor, dict]:
        """(labels on ``device``, teacher name -> dict of tensors on ``device``) from the
        call's arguments: labels and targets, or a :class:`kdcache.KDBatch`."""
        if teacher_targets is None:
            if not hasattr(target, "teacher_targets"):
                if self.teacher is None:
                    raise TypeError(
                        f"{type(self).__name__} reads the teacher from the cache: call "
                        "task(input, labels, targets) or task(input, batch) with a kdcache.KDBatch"
                    )
                return target.to(device, non_blocking=True), {}
            target, teacher_targets = target.labels, target.teacher_targets
        single = _one_teachers(teacher_targets)
        targets = {"teacher": _as_dict(teacher_targets)} if single else {
            name: _as_dict(t) for name, t in teacher_targets.items()
        }  # fmt: skip
        if not single and (
            self.teacher_name is not None or (self.one_teacher and len(targets) > 1)
        ):
            if self.teacher_name not in targets:
                raise ConfigError(
                    f"teacher targets hold {sorted(targets)}; pass teacher=<one of them> "
                    "(ensembles: kdcache.trainer.kd.DistillationLoss)",
                    field="teacher",
                )
            targets = {self.teacher_name: targets[self.teacher_name]}
        return target.to(device, non_blocking=True), _moved(targets, device)

    def prepare_distributed(self, device_ids: list | None = None, **ddp_kwargs) -> "KDTask":
        """Wrap the student in DDP (a teacher is never trained, so never wrapped)."""
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


def _one_teachers(targets) -> bool:
    """Whether ``targets`` are one teacher's (a ``Targets`` or a dict of its tensors)."""
    return hasattr(targets, "as_dict") or "topk_logits" in targets or "features" in targets


def _as_dict(targets) -> dict:
    return targets.as_dict() if hasattr(targets, "as_dict") else dict(targets)


def _moved(value, device: torch.device):
    """``value`` (nested dicts of tensors) on ``device``; class ids as int64."""
    if isinstance(value, dict):
        return {
            k: _moved(v, device).long() if k.endswith("_index") else _moved(v, device)
            for k, v in value.items()
        }
    return value.to(device, non_blocking=True)
