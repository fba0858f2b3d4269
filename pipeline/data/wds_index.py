"""``kdcache index`` over WebDataset tars: a manifest over existing tars, which stay as they are.

Samples are read as the trainer and the teacher job read them (webdataset's grouping: a
member's key is its path up to the first dot of its file name, so keys may hold slashes and
dots in folder names), so the keys the manifest records are the keys every reader finds.
"""

from collections.abc import Sequence

from tqdm import tqdm

from kdcache.errors import KdcacheError, ManifestError
from kdcache.pipeline.data import storage
from kdcache.pipeline.data.file_identity import HashedFile
from kdcache.pipeline.data.index_config import IndexConfig
from kdcache.pipeline.data.index_files import (
    IndexBuilder,
    assign_splits,
    dataset_name,
    expand_locations,
)
from kdcache.pipeline.data.manifest import Manifest
from kdcache.pipeline.data.tar_reader import (
    LABEL_FIELD,
    image_extension,
    sample_label,
    stream_samples,
)


def index_webdataset(tars: str | Sequence[str], out: str, **options) -> Manifest:
    """Write ``out/manifest.parquet`` over the WebDataset tars ``tars`` names (paths or fsspec
    URLs, brace ranges and globs: :func:`~pipeline.data.index_files.expand_locations`) without
    rewriting them; ``options`` are :class:`~pipeline.data.index_config.IndexConfig`'s fields.

    Per sample the manifest records its key, the sha1 of its image member (the first of
    ``image_extensions`` it has), its label (``label_field``: ``cls`` or ``json:label``) and
    the image's size; the tars keep their order and their samples' order. A tar under ``out``
    is recorded relative to it, any other as given (absolute path or URL). Refused, naming tar
    and key: a tar without image members, a sample without image or label, a key seen twice.
    """
    config = IndexConfig(**options)
    with storage.using(config.storage_options):
        return _index_webdataset(tars, out, config)


def _index_webdataset(tars: str | Sequence[str], out: str, config: IndexConfig) -> Manifest:
    extensions = [e.lower().lstrip(".") for e in config.image_extensions]
    field = (config.label_field or LABEL_FIELD).lower()
    locations = expand_locations(tars)
    splits = assign_splits(locations, config.splits)
    samples = {"format": "webdataset", "image_extensions": extensions, "label_field": field}
    builder = IndexBuilder(out, config, samples)
    bar = tqdm(desc="index", unit="img", disable=None if config.progress else True)
    for location, split in zip(locations, splits, strict=True):
        builder.begin_shard(location, split)
        without_image: list[dict] = []
        with_image = 0
        try:
            with storage.open_file(location) as file:
                stream = HashedFile(file)
                for sample in stream_samples(stream, location):
                    ext = image_extension(sample, extensions)
                    if ext is None:
                        without_image.append(sample)
                        continue
                    with_image += 1
                    builder.add(sample["__key__"], sample_label(sample, field), sample[ext])
                    bar.update()
                stream.drain()
            builder.end_shard(stream.identity())
        except KdcacheError:
            raise
        except Exception as error:  # tarfile errors, webdataset's duplicate member names
            message = " ".join(str(error).split()).split(" @ ")[0]
            raise ManifestError(
                f"{location}: unreadable as a WebDataset tar ({type(error).__name__}: {message})"
            ) from None
        _check_images(location, extensions, with_image, without_image)
    bar.close()
    return builder.write(dataset_name(config, out))


def _check_images(location: str, extensions, with_image: int, without: list[dict]) -> None:
    """Refuse a tar without image members, or with a sample lacking one."""
    wanted = "/".join(extensions)
    if not with_image:
        found = sorted({k for s in without for k in s if not k.startswith("__")})
        raise ManifestError(
            f"{location}: no image members (extensions {wanted}; the tar holds "
            f"{', '.join(found) or 'no samples'})"
        )
    if without:
        members = [k for k in without[0] if not k.startswith("__")]
        raise ManifestError(
            f"{location}: sample {without[0]['__key__']} has no image member (extensions "
            f"{wanted}; it has {', '.join(members)})"
        )
