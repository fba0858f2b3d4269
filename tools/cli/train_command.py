"""``kdcache train`` (also ``python -m kdcache.trainer``)."""

import argparse
import ast
from dataclasses import fields
from functools import partial

from kdcache.tools.cli.arg_types import key_value
from kdcache.tools.cli.plan_options import add_plan_arguments, plan_overrides
from kdcache.trainer.data import MIXING_MODES, SCHEDULES
from kdcache.trainer.kd import KD_MODES, KL_REDUCTIONS, TAIL_MODES, TARGET_KINDS, TEACHER_MODES


def _model_arg(text: str) -> tuple[str, object]:
    key, value = key_value(text)
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def _teacher_weight(text: str) -> tuple[str, float]:
    name, value = key_value(text, "NAME=WEIGHT")
    try:
        return name, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NAME=WEIGHT (a number), got {text!r}") from None


def add_train_parser(commands) -> None:
    parser = commands.add_parser(
        "train",
        help="train a student (or a teacher) on the planned views, with cached distillation",
        description="Stream the train shards, show each sample the view planned for the epoch, "
        "join it with the cached teacher targets and train a timm model with cross-entropy plus "
        "soft or hard distillation (DeiT). A DeiT student with a distillation token learns the "
        "labels on its class head and the teacher on its distillation head. Evaluates on the "
        "test split every epoch; writes config.json, metrics.csv and checkpoint.pth to --out.",
    )
    configure_train_parser(parser)


def configure_train_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data", required=True, help="folder holding manifest.parquet (or its path)"
    )
    parser.add_argument(
        "--out", required=True, help="run folder for config, metrics and checkpoint"
    )
    parser.add_argument(
        "--model",
        required=True,
        help="timm architecture, e.g. regnety_002 or deit_tiny_distilled_patch16_224",
    )
    parser.add_argument(
        "--model-arg",
        type=_model_arg,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra timm model kwarg, e.g. patch_size=4 embed_dim=96 (repeatable)",
    )
    parser.add_argument(
        "--resolution",
        type=int,
        default=None,
        help="input size (default: the images' size if they all share one, else the cache "
        "teacher's resolution, else the model's pretrained config)",
    )
    parser.add_argument(
        "--eval-crop-pct",
        type=float,
        default=None,
        help="evaluation: shorter side to resolution / crop_pct, then a centre crop "
        "(default: the model's pretrained config, else 0.875)",
    )
    parser.add_argument(
        "--eval-interpolation",
        default=None,
        help="evaluation resize, e.g. bicubic, bilinear (default: the model's pretrained config)",
    )
    parser.add_argument(
        "--eval-crop-mode",
        choices=["center", "squash", "border"],
        default=None,
        help="evaluation crop as timm's (default: the model's pretrained config, else center)",
    )
    kd = parser.add_argument_group("distillation")
    kd.add_argument(
        "--kd", choices=KD_MODES, default="none", help="distillation mode (default: none)"
    )
    kd.add_argument(
        "--teacher",
        choices=TEACHER_MODES,
        default=None,
        help="where targets come from: cached (--cache), online (the teacher runs on every "
        "batch's views, DeiT's way: --teacher-checkpoint) or none "
        "(default: cached with --cache, else none)",
    )
    kd.add_argument(
        "--teacher-checkpoint",
        default=None,
        metavar="CKPT",
        help="online teacher: a kdcache checkpoint, or published timm weights with --teacher-arch",
    )
    kd.add_argument(
        "--teacher-arch", default=None, help="timm architecture of published online weights"
    )
    kd.add_argument(
        "--cache",
        default=None,
        help="teacher cache made by kdcache teach, or 'auto': the one catalogue entry "
        "that fits the data, plan options and --teacher-name",
    )
    kd.add_argument(
        "--catalog",
        default=None,
        help="catalogue root for --cache auto (default: $KDCACHE_CATALOG)",
    )
    kd.add_argument(
        "--teacher-name",
        dest="teachers",
        nargs="+",
        default=[],
        metavar="NAME",
        help="which teachers of the cache (default: its only one); several: an ensemble, "
        "the mean of their probabilities",
    )
    kd.add_argument(
        "--teacher-weight",
        type=_teacher_weight,
        action="append",
        default=[],
        metavar="NAME=W",
        help="ensemble weight of a teacher, one for each or none (default: equal)",
    )
    kd.add_argument(
        "--head-teacher",
        type=partial(key_value, form="HEAD=NAME"),
        action="append",
        default=[],
        metavar="HEAD=NAME",
        help="DeiT student: dist=NAME distils the distillation head from that teacher alone; "
        "cls=NAME adds that teacher's term on the class head (repeatable)",
    )
    kd.add_argument(
        "--targets",
        choices=TARGET_KINDS,
        default="topk",
        help="topk: cached top-k logits with --tail; sampled: class ids drawn from the teacher "
        "(RS-KD, unbiased; needs a cache taught with --samples, --kd soft, --tau 1) "
        "(default: topk)",
    )
    kd.add_argument(
        "--topk",
        type=int,
        default=None,
        help="use the first K of the cached top-k per view: what a top-K cache holds; online: "
        "reduce the teacher's logits to top-K + logsumexp like such a cache (default: all)",
    )
    kd.add_argument(
        "--samples",
        type=int,
        default=None,
        help="with --targets sampled: use the first N drawn ids per view (default: all)",
    )
    kd.add_argument(
        "--alpha", type=float, default=0.5, help="weight of the teacher term (default: 0.5)"
    )
    kd.add_argument(
        "--tau", type=float, default=1.0, help="soft distillation temperature (default: 1)"
    )
    kd.add_argument(
        "--kl-reduction",
        choices=KL_REDUCTIONS,
        default="batchmean",
        help="batchmean (timm) or deit (sum/numel, DeiT's code) (default: batchmean)",
    )
    kd.add_argument(
        "--tail",
        choices=TAIL_MODES,
        default="uniform",
        help="what soft KD does with the teacher's mass outside the top-k: spread it evenly "
        "(uniform), drop it and renormalise, or keep one 'other' bucket (default: uniform)",
    )
    kd.add_argument(
        "--mixing",
        choices=MIXING_MODES,
        default="exact",
        help="exact: the plan's Mixup/CutMix, which the teacher saw (cached targets used as "
        "they are); label: the cache has no mixing, the trainer mixes images with the "
        "--mixup-alpha/--cutmix-alpha given here and mixes the two samples' cached targets "
        "with the same lambda (FKD-style) (default: exact)",
    )
    kd.add_argument(
        "--label-smoothing", type=float, default=0.0, help="on the label term (default: 0)"
    )
    opt = parser.add_argument_group("optimisation")
    opt.add_argument("--epochs", type=int, default=10, help="default: %(default)s")
    opt.add_argument("--batch-size", type=int, default=128, help="default: %(default)s")
    opt.add_argument(
        "--lr", type=float, default=1e-3, help="AdamW peak learning rate (default: %(default)s)"
    )
    opt.add_argument("--weight-decay", type=float, default=0.05, help="default: %(default)s")
    opt.add_argument(
        "--warmup-epochs", type=float, default=1.0, help="linear warm-up (default: %(default)s)"
    )
    opt.add_argument(
        "--min-lr", type=float, default=1e-5, help="cosine floor (default: %(default)s)"
    )
    opt.add_argument(
        "--clip-grad", type=float, default=None, help="clip gradient norm to this value"
    )
    opt.add_argument(
        "--ema-decay",
        type=float,
        default=None,
        help="keep an EMA of the weights with this decay (e.g. 0.999); evaluated every epoch "
        "and saved as checkpoint-ema.pth",
    )
    run = parser.add_argument_group("run")
    run.add_argument(
        "--seed", type=int, default=0, help="training seed: init, data order (default: 0)"
    )
    run.add_argument(
        "--workers", type=int, default=2, help="DataLoader workers (default: %(default)s)"
    )
    run.add_argument(
        "--shuffle-buffer", type=int, default=2000, help="samples (default: %(default)s)"
    )
    run.add_argument(
        "--view-schedule",
        choices=SCHEDULES,
        default="cycle",
        help="which view a sample gets each epoch: cycle (epoch mod V) or shuffle (a random "
        "order of the V views per sample, renewed every V epochs) (default: cycle)",
    )
    run.add_argument("--device", default="auto", help="auto (cuda if present), cpu or cuda[:N]")
    run.add_argument("--amp", action="store_true", help="bf16 autocast (use on CUDA)")
    run.add_argument(
        "--compile", action="store_true", help="torch.compile the student (pays off on GPUs)"
    )
    run.add_argument(
        "--tensorboard", action="store_true", help="also log to RUN/tensorboard (TensorBoard)"
    )
    run.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its resume.pth (same options), exactly where it "
        "stopped: after an epoch, or mid-epoch after SIGTERM",
    )
    run.add_argument("--quiet", action="store_true", help="no progress output")
    add_plan_arguments(
        parser, defaults_from="the cache's plan with --cache, else the plan defaults"
    )
    parser.set_defaults(run=run_train)  # fmt: skip


def run_train(args: argparse.Namespace) -> None:
    from kdcache.trainer.run import Stopped, TrainConfig, train

    # options named as the config fields, plus the few that are spelled differently
    same_name = {f.name for f in fields(TrainConfig)} & set(vars(args))
    config = TrainConfig(
        **{name: getattr(args, name) for name in same_name},
        manifest=args.data,
        model_args=dict(args.model_arg),
        teacher_weights=dict(args.teacher_weight),
        head_teachers=dict(args.head_teacher),
        plan=plan_overrides(args),
        progress=not args.quiet,
    )
    try:
        final = train(config)
    except Stopped as stopped:
        print(f"train: stopped ({stopped}); continue with the same command and --resume")
        raise SystemExit(143) from None
    print(f"train: final test accuracy {final['test_acc']:.2f}% -> {args.out}")
