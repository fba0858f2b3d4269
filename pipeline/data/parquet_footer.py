"""A Parquet footer read without handing its key-value metadata to Arrow.

A manifest's footer holds its shard list twice (as ``kdcache`` JSON and inside Arrow's
``ARROW:schema``): 11.7 MB at 14,200 shards, which Arrow keeps parsed in several copies for as
long as the file is open (+47 MiB). Here the footer's Thrift (compact protocol) is walked once:
the key-value entries are returned as bytes, and :class:`urls.ParquetSource` gives Arrow the
same footer with an empty key-value list (row groups, schema and everything else byte for
byte as written)."""

from kdcache.errors import ManifestError

_KEY_VALUES = 5  # FileMetaData field 5: list<KeyValue>
_STRUCT, _LIST, _SET, _MAP, _BINARY = 12, 9, 10, 11, 8
_FIXED = {1: 0, 2: 0, 3: 1, 7: 8}  # bool true/false (in the header), byte, double
_VARINT = (4, 5, 6)  # i16, i32, i64
_EMPTY_LIST = bytes([_STRUCT])  # a list of 0 structs
_BOOLS = (1, 2)  # a bool in a list or map is one byte
MAX_DEPTH = 64  # nested values a footer may hold (Parquet's own footers nest a few levels)


class _Reader:
    """A cursor over Thrift compact-protocol bytes that skips any value."""

    def __init__(self, data: memoryview):
        self.data, self.at = data, 0

    def byte(self) -> int:
        self.at += 1
        return self.data[self.at - 1]

    def varint(self) -> int:
        value, shift = 0, 0
        while True:
            b = self.byte()
            value |= (b & 0x7F) << shift
            if b < 0x80:
                return value
            shift += 7

    def binary(self) -> memoryview:
        size = self.varint()
        self.at += size
        if self.at > len(self.data):
            raise ManifestError("binary past the end")
        return self.data[self.at - size : self.at]

    def field(self, last: int) -> tuple[int, int]:
        """The next field's (id, type) after field ``last``; type 0 ends the struct."""
        header = self.byte()
        kind, delta = header & 0x0F, header >> 4
        if kind == 0:
            return 0, 0
        if delta:
            return last + delta, kind
        zigzag = self.varint()
        return (zigzag >> 1) ^ -(zigzag & 1), kind

    def list_header(self) -> tuple[int, int]:
        header = self.byte()
        size = header >> 4
        return (self.varint() if size == 15 else size), header & 0x0F

    def count(self, size: int) -> int:
        """A container's element count, refused when its elements (a byte each at least)
        could not fit in the bytes left: a few bytes cannot declare billions of values."""
        if size > len(self.data) - self.at:
            raise ManifestError(
                f"{size} values declared with {len(self.data) - self.at} bytes left"
            )
        return size

    def skip(self, kind: int, depth: int = 0) -> None:
        if depth > MAX_DEPTH:
            raise ManifestError(f"values nested deeper than {MAX_DEPTH}")
        if kind in _FIXED:
            self.at += _FIXED[kind]
        elif kind in _VARINT:
            self.varint()
        elif kind == _BINARY:
            self.binary()
        elif kind in (_LIST, _SET):
            size, element = self.list_header()
            for _ in range(self.count(size)):
                self._skip_element(element, depth)
        elif kind == _MAP:
            size = self.count(self.varint())
            types = self.byte() if size else 0
            for _ in range(size):
                self._skip_element(types >> 4, depth)
                self._skip_element(types & 0x0F, depth)
        elif kind == _STRUCT:
            last, kind = self.field(0)
            while kind:
                self.skip(kind, depth + 1)
                last, kind = self.field(last)
        else:
            raise ManifestError(f"Thrift type {kind}")

    def _skip_element(self, kind: int, depth: int) -> None:
        """One element of a list, set or map."""
        if kind in _BOOLS:
            self.at += 1
        else:
            self.skip(kind, depth + 1)

    def key_values(self) -> dict[bytes, memoryview | None]:
        """A ``list<KeyValue>`` (field 1 the key, field 2 the value, both binary)."""
        size, element = self.list_header()
        if element != _STRUCT:
            raise ManifestError("key_value_metadata is not a list of structs")
        found = {}
        for _ in range(self.count(size)):
            entry: dict[int, memoryview] = {}
            last, kind = self.field(0)
            while kind:
                if last in (1, 2) and kind == _BINARY:
                    entry[last] = self.binary()
                else:
                    self.skip(kind, 1)
                last, kind = self.field(last)
            if 1 in entry:
                found[bytes(entry[1])] = entry.get(2)
        return found


def without_key_values(footer: memoryview, location: str) -> tuple[bytes, dict]:
    """A Parquet footer's bytes (its Thrift ``FileMetaData``) with its key-value list emptied,
    and the entries it held as bytes (``ARROW:schema`` left out: the columns are then read as
    their Parquet types say)."""
    reader = _Reader(footer)
    try:
        last, kind = reader.field(0)
        while kind:
            if last == _KEY_VALUES and kind == _LIST:
                start = reader.at
                found = reader.key_values()
                kept = bytes(footer[:start]) + _EMPTY_LIST + bytes(footer[reader.at :])
                return kept, {k: None if v is None else bytes(v) for k, v in found.items()
                              if k != b"ARROW:schema"}  # fmt: skip
            reader.skip(kind)
            last, kind = reader.field(last)
    except (IndexError, ManifestError) as error:
        raise ManifestError(f"{location}: Parquet footer cannot be read ({error})") from None
    return bytes(footer), {}
