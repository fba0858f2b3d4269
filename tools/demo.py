"""``kdcache demo``: the whole product on real Fashion-MNIST, with a report of measured figures.

On Fashion-MNIST: shard, train a RegNetY teacher, cache V views with top-k targets, train the
same DeiT student without KD, with cached KD and with the teacher online (same seed and views),
and write DIR/report.json. Full: about 20 minutes on 2 CPU cores; --quick: a subset in about 3
minutes.

shard -> train a RegNetY teacher -> cache V views with top-k (Ray) -> train the same student
three times on the same views and seed (no KD, cached KD, online KD: the teacher run on every
batch with its logits reduced like the cache's) -> report.json and a table.
"""

import argparse
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, replace

from kdcache.tools.cli.arg_types import command_parser


@dataclass(frozen=True)
class FashionRecipe:
    """The Fashion-MNIST recipe of the demo and the objectives benchmark: data sizes, the
    teacher's training, the views and the DeiT student's training."""

    train_limit: int | None = None
    test_limit: int | None = None
    shard_size: int = 1000
    teacher_resolution: int = 32
    teacher_epochs: int = 3
    teacher_lr: float = 5e-3
    views: int = 4
    crop_scale: tuple[float, float] = (0.35, 1.0)
    student: str = "deit_tiny_distilled_patch16_224"
    student_args: dict = field(
        default_factory=lambda: {"patch_size": 7, "embed_dim": 128, "depth": 6, "num_heads": 4}
    )
    student_resolution: int = 28
    student_epochs: int = 2
    batch_size: int = 128
    lr: float = 2e-3
    alpha: float = 0.5
    workers: int = 2
    seed: int = 0


@dataclass(frozen=True)
class DemoConfig(FashionRecipe):
    """Sizes and models of a demo run."""

    source: str = "fashion-mnist"
    teacher: str = "regnety_002"
    topk: int = 5
    tau: float = 1.0


PRESETS = {
    "full": DemoConfig(),
    "quick": DemoConfig(
        train_limit=8000, test_limit=2000, teacher_epochs=3, views=2, student_epochs=2
    ),
}


class _DemoRun:
    """One demo run's folders, common training options and the seconds of each phase."""

    def __init__(self, out: str, config: DemoConfig, progress: bool):
        from kdcache.pipeline.views import ViewPlan

        self.out, self.config, self.progress = out, config, progress
        self.seconds: dict[str, float] = {}
        self.manifest_path = os.path.join(out, "manifest.parquet")
        self.cache = os.path.join(out, "cache.zarr")
        self.teacher_path = os.path.join(out, "teacher.pth")
        self.plan = ViewPlan(seed=config.seed, views=config.views, crop_scale=config.crop_scale)
        self.common = dict(
            manifest=self.manifest_path,
            batch_size=config.batch_size,
            seed=config.seed,
            workers=config.workers,
            plan=asdict(self.plan),
            progress=progress,
            overwrite=True,  # a rerun of the demo replaces its runs, as it does its shards and cache
        )

    def phase(self, name: str, action):
        """Run ``action``, timing it as phase ``name``."""
        if self.progress:
            print(f"== demo: {name}", flush=True)
        began = time.perf_counter()
        result = action()
        self.seconds[name] = round(time.perf_counter() - began, 1)
        return result

    def shard(self):
        from kdcache.pipeline.data import open_source, write_shards

        config = self.config
        limits = {
            k: v for k, v in (("train", config.train_limit), ("test", config.test_limit)) if v
        }
        return self.phase("shard", lambda: write_shards(
            open_source(config.source), self.out, shard_size=config.shard_size, limits=limits,
            overwrite=True, progress=self.progress,
        ))  # fmt: skip

    def train_teacher(self) -> dict:
        from kdcache.trainer.run import TrainConfig, train

        config, run = self.config, os.path.join(self.out, "runs", "teacher")
        result = self.phase("teacher", lambda: train(TrainConfig(
            out=run, model=config.teacher, resolution=config.teacher_resolution,
            epochs=config.teacher_epochs, lr=config.teacher_lr, **self.common,
        )))  # fmt: skip
        os.replace(os.path.join(run, "checkpoint.pth"), self.teacher_path)
        return result

    def teach(self):
        from kdcache.pipeline.teach import TeachConfig, TeacherSource, run_teach

        if os.path.exists(self.cache):
            shutil.rmtree(self.cache)
        return self.phase("teach", lambda: run_teach(TeachConfig(
            manifest=self.manifest_path, cache=self.cache,
            teachers=[TeacherSource(self.teacher_path)], plan=self.plan, topk=self.config.topk,
            progress=self.progress,
        )))  # fmt: skip

    def student(self, name: str, **kd) -> dict:
        """The same student, seed and views: ``kd`` says how it distils (nothing: no KD)."""
        from kdcache.trainer.run import TrainConfig, train

        config = self.config
        options = dict(
            model=config.student, model_args=config.student_args,
            resolution=config.student_resolution, epochs=config.student_epochs, lr=config.lr,
            **self.common, **kd,
        )  # fmt: skip
        out = os.path.join(self.out, "runs", f"student-{name}")
        return self.phase(f"student_{name}", lambda: train(TrainConfig(out=out, **options)))


def run_demo(out: str, config: DemoConfig, progress: bool = True) -> dict:
    """Run every phase into ``out``; return (and write) the report."""
    os.makedirs(out, exist_ok=True)
    run = _DemoRun(out, config, progress)
    manifest = run.shard()
    teacher = run.train_teacher()
    summary = run.teach()
    soft = dict(kd="soft", alpha=config.alpha, tau=config.tau)
    no_kd = run.student("nokd")
    kd = run.student("kd", cache=run.cache, **soft)
    online = run.student("online", teacher="online", teacher_checkpoint=run.teacher_path,
                         topk=config.topk, **soft)  # fmt: skip
    train_rows = sum(s.num_rows for s in manifest.shards_of("train"))
    report = {
        "teacher_acc": round(teacher["test_acc"], 2),
        "student_nokd_acc": round(no_kd["test_acc"], 2),
        "student_kd_acc": round(kd["test_acc"], 2),
        "student_online_acc": round(online["test_acc"], 2),
        "num_views": config.views,
        "topk": config.topk,
        "cache_bytes": summary.cache_bytes,
        "cache_bytes_per_view": round(summary.cache_bytes / (train_rows * config.views), 2),
        "train_samples": train_rows,
        "test_samples": sum(s.num_rows for s in manifest.shards_of("test")),
        "teacher_images_per_s": round(teacher["train_images_per_s"], 1),
        "teacher_views_per_s": round(summary.views / max(summary.seconds, 1e-9), 1),
        "student_nokd_images_per_s": round(no_kd["train_images_per_s"], 1),
        "student_kd_images_per_s": round(kd["train_images_per_s"], 1),
        "student_online_images_per_s": round(online["train_images_per_s"], 1),
        "seconds": {**run.seconds, "total": round(sum(run.seconds.values()), 1)},
        "config": asdict(config),
    }
    text = json.dumps(report, indent=2)
    with open(os.path.join(out, "report.json"), "w") as f:
        f.write(text)
    return json.loads(text)


def format_table(report: dict) -> str:
    """The demo's result as a small text table (img/s of each model's last epoch)."""
    lines = [
        f"{'model':<28}{'test acc %':>11}{'train img/s':>13}",
        f"{'teacher ' + report['config']['teacher']:<28}{report['teacher_acc']:>11.2f}"
        f"{report['teacher_images_per_s']:>13.0f}",
        f"{'student, no KD':<28}{report['student_nokd_acc']:>11.2f}"
        f"{report['student_nokd_images_per_s']:>13.0f}",
        f"{'student, cached soft KD':<28}{report['student_kd_acc']:>11.2f}"
        f"{report['student_kd_images_per_s']:>13.0f}",
        f"{'student, online soft KD':<28}{report['student_online_acc']:>11.2f}"
        f"{report['student_online_images_per_s']:>13.0f}",
        f"cache: {report['num_views']} views x top-{report['topk']}, "
        f"{report['cache_bytes_per_view']:.1f} bytes/view, "
        f"teacher pass {report['teacher_views_per_s']:.0f} views/s",
        "seconds: " + ", ".join(f"{k} {v}" for k, v in report["seconds"].items()),
    ]
    return "\n".join(lines)


def add_demo_parser(commands) -> None:
    parser = command_parser(commands, "demo", __doc__)
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--quick", action="store_true", help="small subset, fewer epochs")
    parser.add_argument(
        "--source",
        default=DemoConfig.source,
        help="dataset, as for kdcache shard (default: %(default)s)",
    )
    parser.add_argument("--quiet", action="store_true", help="only the final table")
    parser.set_defaults(run=run_demo_command)


def run_demo_command(args: argparse.Namespace) -> None:
    config = replace(PRESETS["quick" if args.quick else "full"], source=args.source)
    report = run_demo(args.out, config, progress=not args.quiet)
    print(format_table(report))
    print(f"demo: report written to {os.path.join(args.out, 'report.json')}")
