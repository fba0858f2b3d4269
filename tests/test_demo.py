"""The demo's phases and report, on a tiny Fashion-MNIST slice."""

import json

from kdcache.tools.demo import DemoConfig, format_table, run_demo


def test_demo_writes_every_artifact_and_a_measured_report(tmp_path, ray_local):
    config = DemoConfig(
        train_limit=300,
        test_limit=100,
        shard_size=100,
        teacher_epochs=1,
        views=2,
        topk=3,
        student_args={"patch_size": 7, "embed_dim": 32, "depth": 1, "num_heads": 2},
        student_epochs=1,
        workers=0,
    )
    report = run_demo(str(tmp_path), config, progress=False)
    for path in ("manifest.parquet", "teacher.pth", "cache.zarr/zarr.json", "report.json",
                 "runs/student-nokd/metrics.csv", "runs/student-kd/metrics.csv",
                 "runs/student-online/metrics.csv"):  # fmt: skip
        assert (tmp_path / path).exists(), path
    assert len(list((tmp_path / "shards").glob("*.tar"))) == 4
    assert json.loads((tmp_path / "report.json").read_text()) == report
    for key in ("teacher_acc", "student_nokd_acc", "student_kd_acc", "student_online_acc"):
        assert 0 <= report[key] <= 100
    assert report["num_views"] == 2 and report["topk"] == 3
    cache_bytes = sum(p.stat().st_size for p in (tmp_path / "cache.zarr").rglob("*") if p.is_file())
    assert (
        abs(report["cache_bytes_per_view"] - cache_bytes / (300 * 2))
        < 0.5 + cache_bytes * 0.01 / 600
    )
    assert set(report["seconds"]) == {
        "shard",
        "teacher",
        "teach",
        "student_nokd",
        "student_kd",
        "student_online",
        "total",
    }
    assert all(v > 0 for v in report["seconds"].values())
    assert "cached soft KD" in format_table(report) and "online soft KD" in format_table(report)
