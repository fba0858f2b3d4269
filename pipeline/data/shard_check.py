"""A shard's samples as the manifest says they are, or a one-line :class:`ShardError`.

Every reader of images (the teacher job, the trainer's loader, evaluation, verify) takes its
samples from here: each sample's key must be the manifest's key at that position, its image
bytes must hash to the manifest's sha1, its label must be the manifest's, and the tar must
hold exactly the manifest's samples. So a replaced image, a missing, extra or reordered sample
and a truncated or missing tar are refused, naming shard and key. The sha1 is taken per sample
as it streams (about 1 GB/s, against image decodes of tens of MB/s).
"""

import hashlib
from collections.abc import Iterator

from kdcache.errors import KdcacheError, ShardError
from kdcache.pipeline.data.manifest import Manifest, ShardInfo
from kdcache.pipeline.data.parquet_reader import parquet_samples
from kdcache.pipeline.data.tar_reader import sample_image, sample_label, tar_samples


def checked_samples(manifest: Manifest, shard: ShardInfo) -> Iterator[dict]:
    """The samples of ``shard``'s tar in order (dicts keyed by extension, ``__key__``,
    ``__url__``), each checked against the manifest before it is yielded; the end of the tar
    is checked too (a sample short is an error, raised after the last good sample)."""
    url = manifest.shard_url(shard)
    keys, sha1s = manifest.shard_entries(shard)
    labels = manifest.shard_labels(shard)
    position = 0
    try:
        for sample in _read(manifest, url):
            _check(manifest, url, sample, position, keys, sha1s, labels)
            position += 1
            yield sample
    except KdcacheError:
        raise
    except FileNotFoundError:
        raise ShardError(
            f"{url}: shard file is missing (the manifest lists it with {len(keys)} samples)"
        ) from None
    except Exception as error:  # tarfile and I/O errors: a damaged tar
        raise ShardError(
            f"{url}: unreadable after {position} of {len(keys)} samples "
            f"({type(error).__name__}: {_first_line(error)})"
        ) from error
    if position < len(keys):
        raise ShardError(
            f"{url}: holds {position} samples, the manifest lists {len(keys)}; the first "
            f"missing is key {keys[position]!r} (a truncated or rewritten tar)"
        )


def _read(manifest: Manifest, url: str) -> Iterator[dict]:
    """A shard file's samples: a tar's, or a Parquet file's rows (an indexed Parquet dataset)."""
    if manifest.shard_format == "parquet":
        return parquet_samples(url, manifest.image_extensions[0], manifest.label_field)
    return iter(tar_samples([url]))


def _check(manifest: Manifest, url: str, sample: dict, position: int, keys, sha1s, labels):
    key = sample["__key__"]
    if position >= len(keys):
        raise ShardError(
            f"{url}: extra sample, key {key!r} after the manifest's {len(keys)} samples"
        )
    if key != keys[position]:
        raise ShardError(
            f"{url}: key {key!r} at position {position}, the manifest has {keys[position]!r} "
            "there (samples missing, extra or reordered)"
        )
    found = hashlib.sha1(sample_image(sample, manifest.image_extensions)).hexdigest()
    if found != sha1s[position]:
        raise ShardError(
            f"{url}: sample {key}: image bytes have sha1 {found[:12]}, the manifest "
            f"{sha1s[position][:12]} (the image was replaced or altered)"
        )
    label = sample_label(sample, manifest.label_field)
    if label is not None and label != labels[position]:
        raise ShardError(
            f"{url}: sample {key} has label {label} ({manifest.label_field}), the manifest "
            f"says {labels[position]}"
        )


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else ""
