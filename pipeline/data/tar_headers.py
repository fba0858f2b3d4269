"""The regular members of an uncompressed tar, read straight from its 512-byte headers.

Names, sizes and which members hold file data follow Python's ``tarfile`` (ustar prefixes,
GNU long names, pax ``path`` and ``size`` records, local and global), without its per-member
objects: a sample of two small members costs a few microseconds instead of a hundred. Errors
are ``tarfile.ReadError``, as ``tarfile`` raises them. Stricter than ``tarfile`` reading a
stream, which stops quietly there: a header with a bad checksum or an unreadable size, or a
partial header, is an error wherever it is, not only first in the file. Sparse members are
refused (an image dataset has none).
"""

import re
import struct
import tarfile
from collections.abc import Callable, Iterator

from kdcache.errors import ShardError

BLOCK = 512
SKIP_BYTES = 16 << 20  # data passed over (a metadata member) is read in blocks of this size
READ_AHEAD = 1 << 20  # bytes read at a time for headers and small members
_POSIX = b"ustar\x0000"
_REGULAR = frozenset(b"07\x00")  # tarfile's REGULAR_TYPES (GNU sparse refused)
_LONG = frozenset(b"LK")  # GNU long name / long link name: the next member's
_PAX = frozenset(b"xXg")  # pax extended (x, Solaris X) and global (g) headers
# the types tarfile knows: their data is skipped only when regular; unknown types' always
_KNOWN = frozenset(b"0\x001234567LKS")
_RECORD = re.compile(rb"(\d+) ([^=]+)=")
_SIGNED = struct.Struct("148b8x356b")


def _error(message: str):
    return tarfile.ReadError(message)


def _number(field: bytes) -> int:
    """A numeric header field as tarfile reads it: octal text, or GNU base-256."""
    if field[0] in (0o200, 0o377):
        value = int.from_bytes(field[1:], "big")
        return value - 256 ** (len(field) - 1) if field[0] == 0o377 else value
    try:
        return int(field.split(b"\0", 1)[0].decode("ascii").strip() or "0", 8)
    except ValueError:
        raise _error("invalid header") from None


def _text(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode(tarfile.ENCODING, "surrogateescape")


def _pax_value(value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode(tarfile.ENCODING, "surrogateescape")


def _pax_records(data: bytes) -> dict[str, str]:
    """The ``LENGTH KEYWORD=VALUE\\n`` records of a pax header's data."""
    records, pos = {}, 0
    while match := _RECORD.match(data, pos):
        length = int(match.group(1))
        if length == 0:
            raise _error("invalid header")
        value = data[match.end(2) + 1 : match.start(1) + length - 1]
        records[_pax_value(match.group(2))] = _pax_value(value)
        pos += length
    return records


def _header(block: bytes) -> tuple[str, int, int]:
    """(name, type, size) of one full, non-zero header block, its checksum checked."""
    stored = _number(block[148:156])
    unsigned = 256 + sum(block) - sum(block[148:156])
    if stored != unsigned and stored != 256 + sum(_SIGNED.unpack(block)):
        raise _error("bad checksum")
    name, kind = _text(block[:100]), block[156]
    if kind == 0 and name.endswith("/"):
        kind = ord("5")  # an old-style directory
    if block[257:265] == _POSIX and kind not in b"LKS":
        prefix = _text(block[345:500])
        if prefix:
            name = prefix + "/" + name
    return name, kind, _number(block[124:136])


class TarHeaders:
    """Walks a tar's members from ``read`` (the first header block already read)."""

    def __init__(self, read: Callable[[int], bytes], first: bytes):
        self._raw, self.offset = read, 0
        self._buffer, self._at = first, 0  # bytes read ahead from ``read``, and where we are
        self.globals: dict[str, str] = {}

    def read(self, size: int) -> bytes:
        """Exactly ``size`` bytes, or fewer only at the end of the file (read ahead in
        :data:`READ_AHEAD` blocks, so a small member costs no call of ``read``)."""
        end = self._at + size
        if end > len(self._buffer):
            self._fill(size)
            end = min(self._at + size, len(self._buffer))
        data = self._buffer[self._at : end]
        self._at = end
        self.offset += len(data)
        return data

    def _fill(self, size: int) -> None:
        parts, have = [self._buffer[self._at :]], len(self._buffer) - self._at
        want = max(size, READ_AHEAD)
        while have < size:
            more = self._raw(want - have)
            if not more:
                break
            parts.append(more)
            have += len(more)
        self._buffer, self._at = b"".join(parts), 0

    def skip(self, size: int) -> None:
        """Pass over a member's ``size`` bytes of data (in bounded blocks) and its padding."""
        left = size
        while left > 0:
            step = min(left, SKIP_BYTES)
            if len(self.read(step)) < step:
                raise _error("unexpected end of data")
            left -= step
        self.read(-size % BLOCK)  # short only at the end of the file

    def next(self) -> tuple[str, int, int] | None:
        """(name, type, size) of the next member, None at the end of the archive."""
        at, block = self.offset, self.read(BLOCK)
        if not block:
            if at == 0:
                raise _error("empty file")
            return None  # the file ends at a member boundary (no end-of-archive blocks)
        if len(block) < BLOCK:
            raise _error("truncated header")
        if block.count(0) == BLOCK:
            return None
        name, kind, size = _header(block)
        if kind in _LONG or kind in _PAX:
            data = self.read(-(-size // BLOCK) * BLOCK)
            if len(data) < size:
                raise _error("unexpected end of data")
            member = self.next()
            if member is None:
                raise _error("end of file header")
            if kind == ord("L"):
                return _text(data[:size]), member[1], member[2]
            if kind in _PAX:
                return self._pax(kind, _pax_records(data[:size]), member)
            return member
        if kind == ord("S"):
            raise _error(f"{name}: a sparse member (not read)")
        return self._with(self.globals, (name, kind, size)) if self.globals else (name, kind, size)

    def _pax(self, kind: int, records: dict[str, str], member: tuple[str, int, int]):
        if any(k.startswith("GNU.sparse.") for k in records):
            raise _error(f"{member[0]}: a sparse member (not read)")
        if kind == ord("g"):
            if "size" in records:
                raise _error("a global pax header sets size")
            self.globals.update(records)
            return member
        return self._with({**self.globals, **records}, member)

    @staticmethod
    def _with(records: dict[str, str], member: tuple[str, int, int]) -> tuple[str, int, int]:
        name, kind, size = member
        if "path" in records:
            name = records["path"].rstrip("/")
        if "size" in records:
            try:
                size = int(records["size"])
            except ValueError:
                size = 0
        return name, kind, size


def regular_members(
    read: Callable[[int], bytes], first: bytes, url: str, limit: int, skip_name: re.Pattern
) -> Iterator[tuple[str, bytes]]:
    """(name, data) of each regular member whose name ``skip_name`` does not match, in order;
    a member above ``limit`` bytes is a :class:`ShardError` raised before it is read."""
    headers = TarHeaders(read, first)
    while (member := headers.next()) is not None:
        name, kind, size = member
        if size < 0:
            raise _error("invalid header")
        if kind not in _REGULAR:
            if kind not in _KNOWN:
                headers.skip(size)
            continue
        if skip_name.match(name):
            headers.skip(size)
            continue
        if size > limit:
            raise ShardError(
                f"{url}: member {name} declares {size} bytes, above the "
                f"{limit >> 20} MiB a sample's member may hold"
            )
        data = headers.read(size)
        if len(data) < size:
            raise _error("unexpected end of data")
        headers.read(-size % BLOCK)  # short only at the end of the file
        yield name, data
