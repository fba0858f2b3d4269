"""A shard file's identity for the manifest: its size and sha256, taken from the bytes as they
pass (a tar being written, a tar being indexed) so no file is read a second time for it."""

import hashlib

from kdcache.pipeline.data import storage

BLOCK = 16 << 20


class HashedFile:
    """A file object whose bytes written or read are counted and hashed on their way."""

    def __init__(self, file):
        self.file, self.size, self._digest = file, 0, hashlib.sha256()

    def write(self, data) -> int:
        self._take(data)
        return self.file.write(data)

    def read(self, size: int = -1) -> bytes:
        data = self.file.read(size)
        self._take(data)
        return data

    def drain(self) -> None:
        """Read what is left, so the identity covers the whole file (a tar reader stops at the
        end-of-archive blocks)."""
        while self.read(BLOCK):
            pass

    def identity(self) -> tuple[int, str]:
        """(bytes, sha256 hex) of what passed so far."""
        return self.size, self._digest.hexdigest()

    def _take(self, data) -> None:
        self.size += len(data)
        self._digest.update(data)

    def __getattr__(self, name):  # close, flush, closed, discard ... of the wrapped file
        return getattr(self.file, name)


def file_identity(location: str) -> tuple[int, str]:
    """(size, sha256) of the file at ``location``, read in 16 MiB blocks."""
    with storage.open_file(location) as f:
        hashed = HashedFile(f)
        hashed.drain()
    return hashed.identity()
