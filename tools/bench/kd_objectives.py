"""``kdcache bench kd``: distillation objectives side by side on Fashion-MNIST.

Train two teachers on a Fashion-MNIST subset, cache both (top-10 and sampled ids) in one teacher
pass, then train the same student with the same seed, views and budget once per objective: no
KD, soft and hard KD, top-K x tail options, sampled ids at the bytes of top-K, and the two
teachers' mean. Writes DIR/bench.json and prints a Markdown table; --repeats rounds of every
run, round r with training seed + r.

Trains two teachers, caches both in one Ray pass (top-10 = all classes, and sampled ids),
then trains the same student (same seed, views and budget) once per objective: no KD, soft
KD from full logits, hard KD, top-K for K in {1, 3, 5} with each tail option (the first K of
the cached top-10 are exactly what a top-K cache holds), sampled ids at the bytes of top-K,
and the mean of the two teachers; with ``q8`` also soft KD from a second cache of the same
teachers with q8 targets (full logits and top-5), beside the fp16 rows, and with ``q6`` the
same from a q6 cache; ``objectives`` off keeps only the rows that compare target dtypes (no KD,
soft KD top-10 and top-5 per cache, one teacher); ``feature_rows`` replaces the teachers and
rows by a ViT teacher's logit, feature and attention rows (:mod:`kd_features`). Writes
DIR/bench.json after every run and prints a table (with the quantised caches' mean KL as
``inspect`` reports it).
"""

import argparse
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields

from kdcache.errors import ConfigError
from kdcache.tools.bench.bench_data import bench_manifest
from kdcache.tools.bench.harness import (
    Mode,
    Session,
    add_common_options,
    fresh,
    interleave,
    set_threads,
    shown,
    work_folder,
    write_json,
)
from kdcache.tools.bench.kd_features import DEIT, TEACHER, feature_cache, feature_runs
from kdcache.tools.cli.arg_types import command_parser
from kdcache.tools.demo import FashionRecipe

TAILS = ("uniform", "renormalize", "bucket")
FEATURE_STUDENTS = ("resnet10t", DEIT)


def topk_bytes(k: int) -> int:
    """Raw bytes per view and teacher of top-k targets: fp16 logits, int16 ids, fp32 logsumexp."""
    return 2 * k + 2 * k + 4


def q8_bytes(k: int, num_classes: int) -> int:
    """Raw bytes per view and teacher of q8 top-k targets (pipeline.cache.quantize): uint8
    levels, float16 scale and logsumexp, bit-packed ids."""
    return k + 2 + 2 + math.ceil(k * max(1, math.ceil(math.log2(num_classes))) / 8)


def q6_bytes(k: int, num_classes: int) -> int:
    """Raw bytes per view and teacher of q6 top-k targets (pipeline.cache.q6_layout)."""
    from kdcache.pipeline.cache.q6_layout import packed_size

    return packed_size(k, num_classes)


def sampled_bytes(draws: int) -> int:
    """Raw bytes per view and teacher of sampled targets: one int16 class id per draw."""
    return 2 * draws


@dataclass(frozen=True)
class BenchConfig(FashionRecipe):
    """The benchmark's data, models and budget: the demo's recipe on a smaller subset, two
    views and a smaller student, with two teachers."""

    train_limit: int | None = 3000
    test_limit: int | None = 2000
    views: int = 2
    student_args: dict = field(
        default_factory=lambda: {"patch_size": 7, "embed_dim": 96, "depth": 4, "num_heads": 3}
    )
    teachers: tuple[str, ...] = ("regnety_002", "resnet10t")
    topks: tuple[int, ...] = (1, 3, 5)
    noise_seed: int | None = 1  # a second no-KD run with this training seed
    repeats: int = 3  # rounds of every run, round r with training seed + r
    warmup: int = 0
    threads: int | None = None
    q8: bool = False  # also a q8 cache: fp16 vs q8 targets at the same budget
    q6: bool = False  # also a q6 cache, likewise
    objectives: bool = True  # every objective; False: only the target-dtype rows
    feature_rows: bool = False  # instead: a ViT teacher's logit, feature and attention rows
    vit_teacher: str = "vit_tiny_patch16_224"
    vit_teacher_args: dict = field(
        default_factory=lambda: {"patch_size": 4, "embed_dim": 96, "depth": 4, "num_heads": 3}
    )
    vit_teacher_lr: float = 2e-3
    feature_targets: tuple[str, ...] = ("pre_logits",)  # teach --features
    attention_targets: tuple[str, ...] = ("3:s4x4",)  # teach --attention: the last block's
    feature_weight: float = 1.0  # train --feature-weight
    feature_loss: str = "cosine"  # 1 - cos: scale-free, so the weight compares with CE and KD
    attention_weight: float = 1.0  # train --attention-weight
    attention_loss: str = "kl"  # KL(teacher || student) of the maps normalised to sum 1
    feature_students: tuple[str, ...] = FEATURE_STUDENTS  # "deit": ``student`` above
    resnet_args: dict = field(  # resnet10t at half width (stem 16): a DeiT student's img/s on CPU
        default_factory=lambda: {"channels": [32, 64, 128, 256], "stem_width": 16}
    )
    attention_layers: dict = field(  # the student layer attention is learnt from (4 x 4 maps)
        default_factory=lambda: {"resnet10t": "layer2", "deit": "attention:3"}
    )

    def __post_init__(self) -> None:
        if self.feature_rows and (self.quantised or not self.objectives):
            raise ConfigError("bench-kd: the feature rows have a cache of their own (fp16, one "
                              "ViT teacher); run --q8/--q6/--dtype-rows separately")  # fmt: skip
        unknown = sorted(set(self.feature_students) - set(self.attention_layers))
        if self.feature_rows and unknown:
            raise ConfigError(f"bench-kd: feature students {unknown} have no attention_layers "
                              f"entry (the student layer attention is learnt from)")  # fmt: skip

    @property
    def quantised(self) -> tuple[str, ...]:
        """The quantised target dtypes compared with fp16."""
        return tuple(d for d, on in (("q8", self.q8), ("q6", self.q6)) if on)


def _runs(config: BenchConfig, names: list[str]) -> list[tuple[str, int, dict]]:
    """(label, bytes per view, TrainConfig options) of every student run, in order."""
    first = [names[0]]
    num_classes = 10
    runs = [
        ("no KD", 0, {"kd": "none"}),
        (
            "soft KD, full logits (top-10)",
            topk_bytes(num_classes),
            {"kd": "soft", "teachers": first},
        ),
    ]
    if config.objectives:
        runs += _objective_runs(config, names)
    else:
        runs.append(("soft KD, top-5", topk_bytes(5), {"kd": "soft", "teachers": first, "topk": 5}))
    runs += _quantised_runs(config, first, num_classes)
    if config.noise_seed is not None:
        runs.append(
            (
                f"no KD, training seed {config.noise_seed}",
                0,
                {"kd": "none", "seed": config.noise_seed},
            )
        )
    return runs


def _quantised_runs(config: BenchConfig, first: list[str], num_classes: int) -> list:
    """Soft KD top-10 and top-5 from each quantised cache."""
    runs = []
    for dtype in config.quantised:
        size = q8_bytes if dtype == "q8" else q6_bytes
        for k in (num_classes, 5):
            options = {"kd": "soft", "teachers": first, "topk": k, "cache": dtype}
            runs.append((f"soft KD, top-{k}, {dtype} targets", size(k, num_classes), options))
    return runs


def _objective_runs(config: BenchConfig, names: list[str]) -> list:
    """Hard KD, top-K x tail, sampled ids at the bytes of top-K, and the teachers' mean."""
    first, num_classes = [names[0]], 10
    runs = [("hard KD (teacher argmax)", topk_bytes(1), {"kd": "hard", "teachers": first})]
    for k in config.topks:
        for tail in TAILS:
            options = {"kd": "soft", "teachers": first, "topk": k, "tail": tail}
            runs.append((f"soft KD, top-{k}, tail {tail}", topk_bytes(k), options))
    for k in config.topks:
        draws = (topk_bytes(k)) // 2
        options = {"kd": "soft", "teachers": first, "targets": "sampled", "samples": draws}
        runs.append(
            (f"soft KD, sampled {draws} ids (bytes of top-{k})", sampled_bytes(draws), options)
        )
    runs.append(
        (
            f"soft KD, mean of {' + '.join(names)} (top-10)",
            2 * topk_bytes(num_classes),
            {"kd": "soft", "teachers": names},
        )  # fmt: skip
    )
    return runs


def _logit_caches(out: str, config: BenchConfig, common: dict, plan, manifest) -> tuple:
    """(teachers' figures, phase seconds, caches by dtype, quantisation KL, teacher names): the
    logit teachers trained in ``out`` and cached in one Ray pass, and each quantised cache."""
    from kdcache.pipeline.teach import TeachConfig, TeacherSource, run_teach
    from kdcache.tools.cache.inspect_cache import inspect_cache
    from kdcache.trainer.run import TrainConfig, train

    teachers, phases = {}, {}
    sources, names = [], []
    for arch in config.teachers if config.objectives else config.teachers[:1]:
        name = arch.split("_")[0]
        run = fresh(os.path.join(out, "runs", f"teacher-{name}"))
        started = time.perf_counter()
        final = train(TrainConfig(out=run, model=arch, resolution=config.teacher_resolution,
                                  epochs=config.teacher_epochs, lr=config.teacher_lr,
                                  seed=config.seed, **common))  # fmt: skip
        teachers[name] = {"arch": arch, "test_acc": round(final["test_acc"], 2)}
        phases[f"teacher {name}"] = round(time.perf_counter() - started, 1)
        sources.append(TeacherSource(os.path.join(run, "checkpoint.pth"), name=name))
        names.append(name)
    cache = fresh(os.path.join(out, "cache.zarr"))
    draws = max(topk_bytes(k) // 2 for k in config.topks) if config.objectives else 0
    started = time.perf_counter()
    run_teach(TeachConfig(manifest=manifest.location, cache=cache, teachers=sources, plan=plan,
                          topk=manifest.num_classes, samples=draws,
                          progress=common["progress"]))  # fmt: skip
    phases["teach"] = round(time.perf_counter() - started, 1)
    caches, kl = {"fp16": cache}, {}
    for dtype in config.quantised:
        caches[dtype] = fresh(os.path.join(out, f"cache-{dtype}.zarr"))
        run_teach(TeachConfig(manifest=manifest.location, cache=caches[dtype], teachers=sources,
                              plan=plan, topk=manifest.num_classes, target_dtype=dtype,
                              progress=common["progress"]))  # fmt: skip
        report = inspect_cache(caches[dtype])["teachers"]
        kl[dtype] = {name: report[name]["quantisation_kl"] for name in names}
    return teachers, phases, caches, kl, names


def _teachers_and_runs(out: str, config: BenchConfig, common: dict, plan, manifest) -> tuple:
    """Teachers, phase seconds, caches, quantisation KL, target sizes and the student runs:
    of the feature rows' one ViT teacher, or of the logit rows' teachers and caches."""
    if config.feature_rows:
        made = feature_cache(out, config, common, plan)
        return ({TEACHER: made.teacher}, made.seconds, {"fp16": made.cache}, {},
                {TEACHER: made.sizes}, feature_runs(config, made.sizes))  # fmt: skip
    teachers, phases, caches, kl, names = _logit_caches(out, config, common, plan, manifest)
    return teachers, phases, caches, kl, {}, _runs(config, names)


def run_bench(out: str, config: BenchConfig, progress: bool = True) -> dict:
    """Shards, teachers and one cache rebuilt in ``out``, then every student run, the runs
    interleaved for ``config.repeats`` rounds (round r: training seed + r); the report, also
    written to DIR/bench.json (after every run, with the runs done so far)."""
    from kdcache.pipeline.views import ViewPlan
    from kdcache.trainer.run import TrainConfig, train

    session = Session("bench-kd", asdict(config))
    threads = set_threads(config.threads)
    out = work_folder(out, "bench-kd", session.options)
    manifest = bench_manifest(os.path.join(out, "data"), "fashion-mnist", config.train_limit,
                              config.test_limit or 0, config.shard_size)  # fmt: skip
    plan = ViewPlan(seed=config.seed, views=config.views, crop_scale=config.crop_scale)
    common = dict(
        manifest=manifest.location, batch_size=config.batch_size, workers=config.workers,
        plan=asdict(plan), progress=progress,
    )  # fmt: skip
    teachers, phases, caches, kl, sizes, runs = _teachers_and_runs(
        out, config, common, plan, manifest
    )
    student = dict(
        model=config.student, model_args=config.student_args,
        resolution=config.student_resolution, epochs=config.student_epochs, lr=config.lr,
        alpha=config.alpha, **common,
    )  # fmt: skip
    details = {"modes": [label for label, _, _ in runs], "teachers": teachers,
               "phase_seconds": phases, "quantisation_kl": kl, "plan": plan.to_attrs(),
               "target_bytes_per_view": sizes, "shard_size": config.shard_size,
               "repeat_seeds": [config.seed + r for r in range(config.repeats)], "work": out,
               "torch_threads": threads}  # fmt: skip
    done = []

    def student_run(index: int, repeat: int) -> dict[str, float]:
        label, _, options = runs[index]
        options = dict(options)
        chosen = caches[options.pop("cache", "fp16")]
        if progress:
            print(f"== bench-kd: {label} (round {repeat + 1})", flush=True)
        started = time.perf_counter()
        seed = options.get("seed", config.seed) + max(repeat, 0)
        final = train(TrainConfig(out=fresh(os.path.join(out, "runs", f"student-{index:02d}")),
                                  cache=chosen if options["kd"] != "none" else None,
                                  **{**student, **options, "seed": seed}))  # fmt: skip
        figures = {"test_acc": final["test_acc"], "seconds": time.perf_counter() - started}
        done.append({"run": label, "round": repeat, "seed": seed, **figures})
        write_json(os.path.join(out, "bench.json"), session.report(details, {"done": done}))
        return figures

    modes = [Mode(label, lambda repeat, i=i: student_run(i, repeat))
             for i, (label, _, _) in enumerate(runs)]  # fmt: skip
    measured = interleave(modes, config.repeats, config.warmup, log=lambda _: None)
    measured["runs"] = [{"run": label, "bytes_per_view": size, "options": options}
                        for label, size, options in runs]  # fmt: skip
    report = session.report(details, {**measured, "done": done})
    write_json(os.path.join(out, "bench.json"), report)
    return report


def format_table(report: dict) -> str:
    """The runs as a Markdown table: test accuracy, median (min-max) over the rounds."""
    seeds = report["config"]["repeat_seeds"]
    rounds = list(range(len(seeds)))
    lines = [f"| student run | bytes/view | test acc % | rounds {rounds} (row's seed + round) |",
             "|---|---|---|---|"]  # fmt: skip
    for r in report["runs"]:
        figure = report["modes"][r["run"]]["test_acc"]
        each = " / ".join(f"{a:.2f}" for a in figure["runs"])
        lines.append(f"| {r['run']} | {r['bytes_per_view']} | {shown(figure, 2)} | {each} |")
    for dtype, kl in report["config"].get("quantisation_kl", {}).items():
        shown_kl = ", ".join(f"{name} {value:.3g}" for name, value in kl.items())
        lines.append(f"\n{dtype} cache: mean KL(fp16 targets || {dtype} targets) {shown_kl} nats")
    for name, sizes in report["config"].get("target_bytes_per_view", {}).items():
        shown_sizes = ", ".join(f"{kind} {value}" for kind, value in sizes.items())
        lines.append(f"\nstored bytes per view, teacher {name} (the cache's layout, as inspect "
                     f"prints): {shown_sizes}")  # fmt: skip
    teachers = ", ".join(f"{t['arch']} {t['test_acc']:.2f} %"
                         for t in report["config"]["teachers"].values())  # fmt: skip
    lines.append(f"\nteachers: {teachers}; {report['config']['repeats']} rounds (training seeds "
                 f"{report['config']['repeat_seeds']}); total {report['seconds']:.0f} s")  # fmt: skip
    return "\n".join(lines)


def add_bench_kd_parser(commands) -> None:
    parser = command_parser(commands, "kd", __doc__)
    add_common_options(parser, work="shards, teachers, cache, runs and bench.json", warmup=0,
                       work_required=True, work_flags=("--out", "--work"))  # fmt: skip
    parser.add_argument("--train-limit", type=int, default=3000, help="default: %(default)s")
    parser.add_argument("--test-limit", type=int, default=2000, help="default: %(default)s")
    parser.add_argument("--views", type=int, default=2, help="cached views (default: 2)")
    parser.add_argument("--student-epochs", type=int, default=2, help="default: %(default)s")
    parser.add_argument("--teacher-epochs", type=int, default=3, help="default: %(default)s")
    parser.add_argument("--seed", type=int, default=0, help="plan and training seed (default: 0)")
    parser.add_argument("--quiet", action="store_true", help="only the final table")
    parser.add_argument(
        "--q8", action="store_true", help="also soft KD from a q8-targets cache (fp16 vs q8)"
    )
    parser.add_argument(
        "--q6", action="store_true", help="also soft KD from a q6-targets cache (fp16 vs q6)"
    )
    parser.add_argument(
        "--dtype-rows",
        action="store_true",
        help="only the rows comparing target dtypes: no KD, soft KD top-10 and top-5 from the "
        "fp16 cache and each of --q8/--q6's (one teacher); use --repeats 2 for both seeds",
    )
    parser.add_argument(
        "--feature-rows",
        action="store_true",
        help="instead: a small ViT teacher trained here, cached once with top-10 logits, "
        "pre_logits features and its last block's attention (4x4); per student (half-width "
        "resnet10t, the ViT -> ResNet row, and the DeiT of the other rows) no KD, soft KD on the "
        "logits, + features, + attention, + both, and the no-KD seed noise; bytes per view per "
        "target",
    )
    parser.add_argument(
        "--feature-students", nargs="+", choices=FEATURE_STUDENTS, default=FEATURE_STUDENTS,
        metavar="STUDENT", help="with --feature-rows: resnet10t and/or deit (default: both)",
    )  # fmt: skip
    parser.set_defaults(run=run_bench_command)


def run_bench_command(args: argparse.Namespace) -> None:
    given = {f.name: getattr(args, f.name) for f in fields(BenchConfig) if hasattr(args, f.name)}
    given["feature_students"] = tuple(args.feature_students)
    config = BenchConfig(**given, objectives=not args.dtype_rows)
    report = run_bench(args.work, config, progress=not args.quiet)
    print(format_table(report))
    print(f"bench-kd: report written to {os.path.join(args.work, 'bench.json')}")
    write_json(args.json, report)
