"""The lean tar reader against Python's ``tarfile`` (what read the tars before): the same
members, names and bytes for tars in every format ``tarfile`` writes, and the same refusals."""

import io
import re
import tarfile

import pytest

from kdcache.pipeline.data.tar_headers import regular_members

META = re.compile(r"__[^/]*__($|/)")
LIMIT = 1 << 20


def _with_tarfile(data: bytes) -> list[tuple[str, bytes]]:
    """The members as ``tarfile`` streams them (regular, metadata skipped)."""
    found = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r|") as archive:
        for info in archive:
            if info.isreg() and not META.match(info.name):
                found.append((info.name, archive.extractfile(info).read()))
    return found


def _lean(data: bytes) -> list[tuple[str, bytes]]:
    stream = io.BytesIO(data)
    return list(regular_members(stream.read, stream.read(512), "x.tar", LIMIT, META))


def _tar(fmt: int, **options) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt, **options) as tar:
        deep = "/".join(["folder"] * 14)  # a path beyond the 100 bytes of a name field
        for name, data in (
            ("a/0.jpg", b"\xff\xd8" + bytes(700)),
            ("a/0.cls", b"3"),
            (f"{deep}/1.jpg", b"x" * 513),
            (f"{deep}/{'n' * 120}.cls", b"4"),
            ("ü/naïve.jpg", b"y" * 512),
            ("empty/2.txt", b""),
            ("__meta__.json", b"{}"),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, kind in (("d", tarfile.DIRTYPE), ("l", tarfile.SYMTYPE), ("f", tarfile.FIFOTYPE)):
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, "a/0.jpg" if kind == tarfile.SYMTYPE else ""
            tar.addfile(info)
        hard = tarfile.TarInfo("h")
        hard.type, hard.linkname = tarfile.LNKTYPE, "a/0.jpg"
        tar.addfile(hard)
    return out.getvalue()


@pytest.mark.parametrize(
    "fmt",
    [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT],
    ids=["ustar", "gnu", "pax"],
)
def test_every_format_reads_as_tarfile_reads_it(fmt):
    data = _tar(fmt) if fmt != tarfile.USTAR_FORMAT else _ustar()
    assert _lean(data) == _with_tarfile(data)
    assert len(_lean(data)) >= 3


def _ustar() -> bytes:
    """ustar has no long names beyond prefix + name: names of 100 + 155 bytes at most."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in ((f"{'p' * 120}/0.jpg", b"z" * 1000), ("b/1.jpg", b"w"), ("c/", b"")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def test_a_global_pax_header_renames_as_tarfile_does():
    data = _tar(tarfile.PAX_FORMAT, pax_headers={"comment": "made by a test"})
    assert _lean(data) == _with_tarfile(data)


def test_a_tar_without_end_blocks_reads_to_its_last_member():
    data = _tar(tarfile.GNU_FORMAT)
    end = data.rindex(b"a/0.jpg")  # the hard link's header: everything before it is whole
    cut = data[: end - end % 512]
    assert _lean(cut) == _with_tarfile(cut)


@pytest.mark.parametrize(
    "damage",
    ["empty", "truncated data", "bad first checksum", "partial first header"],
)
def test_damage_tarfile_refuses_is_refused(damage):
    data = _tar(tarfile.GNU_FORMAT)
    data = {
        "empty": b"",
        "truncated data": data[:1000],
        "bad first checksum": b"\x01" + data[1:],
        "partial first header": data[:300],
    }[damage]
    with pytest.raises(tarfile.ReadError):
        _with_tarfile(data)
    with pytest.raises(tarfile.ReadError):
        _lean(data)


def test_a_corrupt_header_inside_the_tar_is_refused_where_tarfile_stops():
    """``tarfile`` reading a stream ends quietly at a bad header past the first; the lean
    reader refuses it (a damaged tar indexed as a shorter one would hide the damage)."""
    data = bytearray(_tar(tarfile.GNU_FORMAT))
    second = 512 + 1024  # the header after the first member (700 bytes of data)
    data[second + 5] ^= 0xFF
    assert len(_with_tarfile(bytes(data))) == 1
    with pytest.raises(tarfile.ReadError, match="bad checksum"):
        _lean(bytes(data))
