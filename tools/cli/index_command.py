"""``kdcache index``: a manifest over existing WebDataset tars or Parquet files, in place."""

import argparse

from kdcache.pipeline.data import IndexConfig
from kdcache.tools.cli.arg_types import command_parser, key_value
from kdcache.tools.cli.config_options import add_config_options, config_values


def _split_pattern(text: str) -> tuple[str, str]:
    return key_value(text, "NAME=PATTERN (e.g. test='val-*.tar')")


def _extensions(text: str) -> list[str]:
    found = [e.strip().lstrip(".") for e in text.split(",") if e.strip()]
    if not found:
        raise argparse.ArgumentTypeError(f"expected extensions like jpg,png, got {text!r}")
    return found


def add_index_parser(commands) -> None:
    """``kdcache index``: write manifest.parquet over existing WebDataset tars or Parquet files in
    place.

    Index existing shards without rewriting them: per sample its key, the sha1 of its image, its
    label and image size; splits by file-name pattern. teach, train, inspect and verify then
    read the files as they are.
    """
    parser = command_parser(commands, "index", add_index_parser.__doc__)
    parser.add_argument(
        "files",
        nargs="+",
        metavar="FILE",
        help="tars or Parquet files: paths or fsspec URLs, brace ranges "
        "(train-{000000..000146}.tar) and globs",
    )
    parser.add_argument("--out", required=True, help="folder (or URL) of the manifest")
    add_config_options(
        parser, IndexConfig, parse={"splits": _split_pattern, "image_extensions": _extensions}
    )
    parser.set_defaults(run=run_index)


def run_index(args: argparse.Namespace) -> None:
    from kdcache.pipeline.data import index_shards

    manifest = index_shards(args.files, args.out, **config_values(IndexConfig, args))
    counts = {s: sum(x.num_rows for x in manifest.shards_of(s))
              for s in dict.fromkeys(x.split for x in manifest.shards)}  # fmt: skip
    print(
        f"index: {len(manifest.shards)} files ({counts}), {manifest.num_classes} classes, "
        f"{manifest.location}; fingerprint {manifest.fingerprint[:16]}"
    )
    if any(x.file.startswith("/") or "://" in x.file for x in manifest.shards):
        print("index: the files lie outside the manifest's folder: teach, train, inspect and "
              "verify read them with --allow-remote-shards")  # fmt: skip
