"""The options of one training run, each with its default and help (``kdcache train --help``
is generated from these fields)."""

from dataclasses import dataclass

from kdcache._options import option
from kdcache.errors import ConfigError
from kdcache.pipeline.data import StorageOptions, storage
from kdcache.pipeline.teach import ATTENTION_HELP, FEATURE_DIM_HELP, FEATURES_HELP, TeacherSource
from kdcache.pipeline.views import ViewPlan, max_pixels_option
from kdcache.trainer.data import SCHEDULES
from kdcache.trainer.kd import (
    ATTENTION_LOSSES,
    FEATURE_LOSSES,
    KD_MODES,
    KL_REDUCTIONS,
    MIXING_MODES,
    TAIL_MODES,
    TARGET_KINDS,
    TEACHER_MODES,
)

KD, OPT, RUN, EVAL = "distillation", "optimisation", "run", "evaluation"
FEAT = "feature and attention distillation"
EVAL_CROP_MODES = ("center", "squash", "border")  # timm's crop modes


@dataclass
class TrainConfig:
    """Options of one training run (see ``kdcache train --help``)."""

    manifest: str = option(help="folder holding manifest.parquet (or its path)", flag="--data")
    out: str = option(help="run folder for config, metrics and checkpoint")
    model: str = option(
        help="timm architecture, e.g. regnety_002 or deit_tiny_distilled_patch16_224"
    )
    model_args: dict = option(
        factory=dict,
        flag="--model-arg",
        metavar="KEY=VALUE",
        help="extra timm model kwarg, e.g. patch_size=4 embed_dim=96 (repeatable)",
    )
    resolution: int | None = option(
        None,
        help="input size, at least 16 (default: the images' size if they all share one, else "
        "the cache teacher's resolution, else the model's pretrained config)",
    )
    pretrained: bool = option(
        False,
        help="start from timm's pretrained weights for --model, from --pretrained-path or the "
        "local Hugging Face cache (nothing is downloaded); a classifier for another class "
        "count starts new, as in timm fine-tuning",
    )
    pretrained_path: str | None = option(
        None, metavar="FILE", help="the pretrained weights file (implies --pretrained)"
    )
    initial_checkpoint: str | None = option(
        None,
        metavar="FILE",
        help="start from these weights (a kdcache checkpoint or a state dict), loaded strictly",
    )
    initial_checkpoint_key_map: str | None = option(
        None,
        metavar="MAP",
        help="rename the initial checkpoint's tensors first: strip-prefix, positional or "
        "module:function",
    )
    eval_crop_pct: float | None = option(
        None,
        group=EVAL,
        help="evaluation: shorter side to resolution / crop_pct, then a centre crop "
        "(default: the model's pretrained config, else 0.875)",
    )
    eval_interpolation: str | None = option(
        None,
        group=EVAL,
        help="evaluation resize, e.g. bicubic, bilinear (default: the model's pretrained config)",
    )
    eval_crop_mode: str | None = option(
        None,
        choices=EVAL_CROP_MODES,
        group=EVAL,
        help="evaluation crop as timm's: center, squash (whole image to a square) or border "
        "(default: the model's pretrained config, else center)",
    )
    kd: str = option("none", choices=KD_MODES, group=KD, help="distillation mode")
    teacher: str | None = option(
        None,
        choices=TEACHER_MODES,
        group=KD,
        help="where targets come from: cached (--cache), online (the teacher runs on every "
        "batch's views, DeiT's way: --teacher-checkpoint) or none "
        "(default: cached with --cache, else none)",
    )
    teacher_checkpoint: str | None = option(
        None,
        metavar="CKPT",
        group=KD,
        help="online teacher: a kdcache checkpoint, or published timm weights with --teacher-arch",
    )
    teacher_arch: str | None = option(
        None, group=KD, help="timm architecture of published online weights"
    )
    # the online teacher with all its build options (key map, class map, preprocessing); set,
    # it is what teacher_checkpoint and teacher_arch describe
    teacher_source: TeacherSource | None = None
    cache: str | None = option(
        None,
        group=KD,
        help="teacher cache made by kdcache teach, or 'auto': the one catalogue entry "
        "that fits the data, plan options and --teacher-name",
    )
    catalog: str | None = option(
        None, group=KD, help="catalogue root for --cache auto (default: $KDCACHE_CATALOG)"
    )
    teachers: list[str] = option(
        factory=list,
        flag="--teacher-name",
        metavar="NAME",
        group=KD,
        help="which teachers of the cache (default: its only one); several: an ensemble, "
        "the mean of their probabilities",
    )
    teacher_weights: dict = option(
        factory=dict,
        flag="--teacher-weight",
        metavar="NAME=W",
        group=KD,
        help="ensemble weight of a teacher, one for each or none (default: equal)",
    )
    head_teachers: dict = option(
        factory=dict,
        flag="--head-teacher",
        metavar="HEAD=NAME",
        group=KD,
        help="DeiT student: dist=NAME distils the distillation head from that teacher alone; "
        "cls=NAME adds that teacher's term on the class head (repeatable)",
    )
    targets: str = option(
        "topk",
        choices=TARGET_KINDS,
        group=KD,
        help="topk: cached top-k logits with --tail; sampled: class ids drawn from the teacher "
        "(RS-KD, unbiased; needs a cache taught with --samples, --kd soft, --tau 1)",
    )
    topk: int | None = option(
        None,
        group=KD,
        help="use the first K of the cached top-k per view: what a top-K cache holds; online: "
        "reduce the teacher's logits to top-K + logsumexp like such a cache (default: all)",
    )
    samples: int | None = option(
        None,
        group=KD,
        help="with --targets sampled: use the first N drawn ids per view (default: all)",
    )
    # the run's view plan: a ViewPlan (with a cache, every field must be the cache's, views
    # may be fewer), or a dict of the plan fields set (the others: the cache's, else the
    # defaults), or None (the cache's plan, else the default plan); see plan_fields()
    plan: ViewPlan | dict | None = option(None, help="view plan (the plan options below)")
    alpha: float = option(0.5, group=KD, help="weight of the teacher term")
    tau: float = option(1.0, group=KD, help="soft distillation temperature")
    kl_reduction: str = option(
        "batchmean",
        choices=KL_REDUCTIONS,
        group=KD,
        help="batchmean (timm) or deit (sum/numel, DeiT's code)",
    )
    tail: str = option(
        "uniform",
        choices=TAIL_MODES,
        group=KD,
        help="what soft KD does with the teacher's mass outside the top-k: spread it evenly "
        "(uniform), drop it and renormalise, or keep one 'other' bucket",
    )
    label_smoothing: float = option(0.0, group=KD, help="on the label term")
    feature_weight: float = option(
        0.0, group=FEAT, help="weight of the feature alignment term, added to the loss (0: off)"
    )
    attention_weight: float = option(
        0.0, group=FEAT, help="weight of the attention map term, added to the loss (0: off)"
    )
    feature_loss: str = option("mse", choices=FEATURE_LOSSES, group=FEAT, help="feature term")
    attention_loss: str = option(
        "kl",
        choices=ATTENTION_LOSSES,
        group=FEAT,
        help="attention term, on maps normalised to sum 1",
    )
    features: tuple[str, ...] = option(
        (),
        metavar="LAYER[:POOL]",
        group=FEAT,
        help="cached: which of the cache's feature targets to learn (default: all); online: "
        + FEATURES_HELP,
    )
    attention: tuple[str, ...] = option(
        (),
        metavar="BLOCK[:SxS]",
        group=FEAT,
        help="cached: which of the cache's attention targets to learn (default: all); online: "
        + ATTENTION_HELP,
    )
    feature_dim: int | None = option(
        None, metavar="D", group=FEAT, help="online: " + FEATURE_DIM_HELP
    )
    student_layers: dict = option(
        factory=dict,
        flag="--student-layer",
        metavar="TARGET=LAYER",
        group=FEAT,
        help="the student layer a teacher target is learnt from: pre_logits, a "
        "forward_intermediates index, a module name, or attention:BLOCK for a ViT student's "
        "own attention (default: pre_logits for vectors, the last feature_info stage for maps "
        "and attention) (repeatable)",
    )
    epochs: int = option(10, group=OPT, help="epochs to train")
    batch_size: int = option(128, group=OPT, help="samples per step (per rank under DDP)")
    lr: float = option(1e-3, group=OPT, help="AdamW peak learning rate")
    weight_decay: float = option(0.05, group=OPT, help="AdamW weight decay")
    warmup_epochs: float = option(1.0, group=OPT, help="linear warm-up")
    min_lr: float = option(1e-5, group=OPT, help="cosine floor")
    clip_grad: float | None = option(None, group=OPT, help="clip gradient norm to this value")
    ema_decay: float | None = option(
        None,
        group=OPT,
        help="keep an EMA of the weights with this decay (e.g. 0.999); evaluated every epoch "
        "and saved as checkpoint-ema.pth",
    )
    seed: int = option(0, group=RUN, help="training seed: init, data order")
    workers: int = option(2, group=RUN, help="DataLoader workers")
    device: str = option("auto", group=RUN, help="auto (cuda if present), cpu or cuda[:N]")
    amp: bool = option(False, group=RUN, help="bf16 autocast (use on CUDA)")
    compile: bool = option(False, group=RUN, help="torch.compile the student (pays off on GPUs)")
    shuffle_buffer: int = option(2000, group=RUN, help="samples in the shuffle buffer")
    view_schedule: str = option(
        "cycle",
        choices=SCHEDULES,
        group=RUN,
        help="which view a sample gets each epoch: cycle (epoch mod V) or shuffle (a random "
        "order of the V views per sample, renewed every V epochs)",
    )
    mixing: str = option(
        "exact",
        choices=MIXING_MODES,
        group=KD,
        help="exact: the plan's Mixup/CutMix, which the teacher saw (cached targets used as "
        "they are); label: the cache has no mixing, the trainer mixes images with the "
        "--mixup-alpha/--cutmix-alpha given here and mixes the two samples' cached targets "
        "with the same lambda (FKD-style)",
    )
    channels_last: bool = option(
        False, group=RUN, help="channels-last student and inputs (faster CNNs on GPUs)"
    )
    profile: int = option(
        0,
        metavar="N",
        group=RUN,
        help="write a torch.profiler trace of the first N steps to RUN/profile/ and print "
        "the share of step time spent waiting for input (0: off)",
    )
    max_pixels: int = max_pixels_option(group=RUN)
    allow_remote_shards: bool = storage.remote_shards_option(group=RUN)
    tensorboard: bool = option(False, group=RUN, help="also log to RUN/tensorboard (TensorBoard)")
    resume: bool = option(
        False,
        group=RUN,
        help="continue the run in --out from its resume.pth (same options), exactly where it "
        "stopped: after an epoch, or mid-epoch after SIGTERM",
    )
    overwrite: bool = option(
        False, group=RUN, help="replace the run already in --out instead of refusing to start"
    )
    progress: bool = option(True, flag="--quiet", group=RUN, help="no progress output")
    storage_options: StorageOptions | None = storage.storage_option()

    def teacher_mode(self) -> str:
        """Where the distillation targets come from: ``teacher``, else cached with a cache,
        else none."""
        return self.teacher or ("cached" if self.cache else "none")

    def plan_fields(self) -> dict:
        """The plan fields this run sets (a ViewPlan sets them all), checked to be a plan's."""
        if self.plan is None:
            return {}
        if isinstance(self.plan, ViewPlan):
            return {name: getattr(self.plan, name) for name in ViewPlan.__dataclass_fields__}
        if not isinstance(self.plan, dict):
            raise ConfigError(
                f"plan: expected a ViewPlan or a dict of its fields, got {type(self.plan).__name__}",
                field="plan",
            )
        unknown = sorted(set(self.plan) - set(ViewPlan.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"plan: no field {unknown[0]!r} in a view plan", field="plan")
        return dict(self.plan)

    def validate(self) -> "TrainConfig":
        """Refuse options out of range or that do not fit together, before any work
        (:class:`~kdcache.errors.ConfigError` naming the field); returns the config."""
        mode = self.teacher_mode()
        if mode not in TEACHER_MODES:
            raise ConfigError(
                f"teacher must be one of {TEACHER_MODES}, got {mode!r}", field="teacher"
            )
        if self.epochs < 1:
            raise ConfigError(f"epochs must be at least 1, got {self.epochs}", field="epochs")
        if mode == "none" and self.kd != "none":
            raise ConfigError(
                f"kd {self.kd} with teacher none: distillation needs a teacher (a cache for "
                "cached targets, or teacher online with a teacher checkpoint)",
                field="kd",
            )
        if mode != "none" and self.kd == "none":
            raise ConfigError(f"teacher {mode} needs kd soft or hard", field="kd")
        if mode == "online":
            self._check_online()
        if mode == "cached" and self.cache is None:
            raise ConfigError("teacher cached needs a cache", field="cache")
        if mode != "cached" and self.cache is not None:
            raise ConfigError(
                f"cache holds cached targets; teacher {mode} does not use one", field="cache"
            )
        if self.mixing == "label" and self.cache is None:
            raise ConfigError("mixing label mixes cached targets: it needs a cache", field="mixing")
        self.plan_fields()
        return self

    def _check_online(self) -> None:
        if self.teacher_checkpoint is None and getattr(self, "teacher_source", None) is None:
            raise ConfigError(
                "teacher online needs a teacher checkpoint", field="teacher_checkpoint"
            )
        if self.teachers or self.targets == "sampled":
            raise ConfigError(
                "teacher online runs one teacher on top-k targets: teachers and targets "
                "sampled are for cached teachers",
                field="teacher",
            )
