import hashlib
import io
import pathlib

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from kdcache.errors import ConfigError
from kdcache.pipeline.data import FASHION_MNIST_DIR, open_source, read_idx
from tests.conftest import SHARD_SIZE, TEST_ROWS, TRAIN_ROWS, make_shards


def test_manifest_layout_and_rows(data):
    assert [s.split for s in data.shards] == ["train"] * 5 + ["test"] * 2
    assert [s.num_rows for s in data.shards] == [100, 100, 100, 100, 50, 100, 100]
    table = data.table
    assert len(table) == TRAIN_ROWS + TEST_ROWS
    assert set(table.column_names) >= {"row", "key", "shard", "label", "split"}
    rows, shards = table["row"].to_numpy(), table["shard"].to_numpy()
    np.testing.assert_array_equal(rows // SHARD_SIZE, shards)  # row = shard * shard_size + pos
    assert data.num_rows == 7 * SHARD_SIZE
    assert data.classes[0] == "T-shirt/top" and data.channels == 1
    assert 0.2 < data.pixel_mean[0] < 0.4 and 0.25 < data.pixel_std[0] < 0.45
    # each shard's size and sha256, hashed while written, are the file's
    files = [pathlib.Path(data.shard_url(s)).read_bytes() for s in data.shards]
    assert [(s.bytes, s.sha256) for s in data.shards] == [
        (len(f), hashlib.sha256(f).hexdigest()) for f in files
    ]


def test_tars_hold_the_images_and_labels_of_the_idx_files(data):
    images = read_idx(FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz")
    labels = read_idx(FASHION_MNIST_DIR / "train-labels-idx1-ubyte.gz")
    shard = data.shards[4]
    samples = list(wds.WebDataset(data.shard_url(shard), shardshuffle=False, empty_check=False))
    assert [s["__key__"] for s in samples] == data.shard_keys(shard)
    for position, sample in enumerate(samples):
        index = 400 + position
        pixels = np.asarray(Image.open(io.BytesIO(sample["png"])))
        np.testing.assert_array_equal(pixels, images[index])
        assert int(sample["cls"]) == labels[index] == data.labels[shard.id * SHARD_SIZE + position]


def test_fingerprint_is_stable_and_follows_content(tmp_path, data):
    again = make_shards(tmp_path / "again")
    assert again.fingerprint == data.fingerprint
    for shard in data.shards:  # byte-identical tars
        with open(data.shard_url(shard), "rb") as a, open(again.shard_url(shard), "rb") as b:
            assert a.read() == b.read()
    fewer = make_shards(tmp_path / "fewer", train_rows=TRAIN_ROWS - 1)
    assert fewer.fingerprint != data.fingerprint


def test_existing_manifest_is_kept_and_bad_sources_are_named(tmp_path):
    make_shards(tmp_path / "d", train_rows=20, test_rows=10)
    before = (tmp_path / "d" / "manifest.parquet").read_bytes()
    with pytest.raises(FileExistsError, match="overwrite replaces it"):
        make_shards(tmp_path / "d", train_rows=30, test_rows=10)
    assert (tmp_path / "d" / "manifest.parquet").read_bytes() == before
    with pytest.raises(ConfigError, match="not a directory"):
        open_source(str(tmp_path / "missing"))
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(ConfigError, match="no class folders"):
        open_source(str(tmp_path / "empty"))


def test_image_folder_source(tmp_path):
    for split, count in (("train", 3), ("test", 1)):
        for name, value in (("cat", 40), ("dog", 200)):
            folder = tmp_path / "imgs" / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (12, 8), (value, i, 0)).save(folder / f"{i}.png")
    manifest = make_shards_from(tmp_path / "imgs", tmp_path / "out")
    assert manifest.classes == ["cat", "dog"] and manifest.channels == 3
    labels = manifest.table["label"].to_pylist()  # a class-stratified shuffle per split
    assert sorted(labels[:6]) == [0, 0, 0, 1, 1, 1] and sorted(labels[6:]) == [0, 1]
    np.testing.assert_allclose(manifest.aspect[:3], 8 / 12)


def make_shards_from(source, out):
    from kdcache.pipeline.data import write_shards

    return write_shards(open_source(str(source)), str(out), shard_size=4, progress=False)
