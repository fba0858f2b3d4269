"""Where a file kdcache reads may send it: every location named inside a data file (a
manifest's shard files, a catalogue row's cache, a cache's teacher source) is checked here
against the root it must stay under, so an edited file cannot make kdcache read, write or
fetch elsewhere. Each check raises :class:`ManifestError` naming the file and field."""

import posixpath

from kdcache.errors import ManifestError
from kdcache.pipeline.data import urls


def shard_location(manifest: str, file: str, *, allow_remote: bool = False) -> str:
    """The location of a shard ``file`` listed by the manifest at ``manifest``: a relative
    path that stays inside the manifest's folder (no absolute path, no ``..`` leaving it). A
    URL only under the folder of a remote manifest. With ``allow_remote`` (the user vouches for
    the manifest: one ``kdcache index`` wrote over files elsewhere) also an absolute path or a
    URL anywhere."""
    folder = urls.parent(manifest)
    if "%" in file and not allow_remote and urls.local_path(urls.join(folder, file)) is None:
        raise ManifestError(
            f"{manifest}: shard file {file!r} holds '%' (percent-encoding, which a URL client "
            "decodes); shard files of a manifest at a URL are plain relative paths"
        )
    if urls.is_url(file) and urls.local_path(file) is None:
        if _url_under(file, folder) or allow_remote:
            return file
        raise ManifestError(
            f"{manifest}: shard file {file!r} is a URL outside the manifest's folder; shard "
            "files are paths relative to the manifest (--allow-remote-shards to read it)"
        )
    if allow_remote and (file.startswith("/") or urls.is_url(file)):
        return file
    normal = posixpath.normpath(file)
    if file.startswith("/") or urls.is_url(file) or normal == ".." or normal.startswith("../"):
        raise ManifestError(
            f"{manifest}: shard file {file!r} leaves the manifest's folder; shard files are "
            "paths relative to it, without '..' (--allow-remote-shards to read files elsewhere)"
        )
    return urls.join(folder, normal)


def _url_under(url: str, folder: str) -> bool:
    """Whether ``url`` lies under ``folder``, itself a URL, without a ``..`` step (and
    without ``%``: a client may decode ``%2E%2E`` into one)."""
    inside = urls.is_url(folder) and url.startswith(folder.rstrip("/") + "/")
    return inside and ".." not in url.split("/") and "%" not in url[len(folder) :]


def catalogued_cache(root: str, cache: str, entry: str, *, writes: bool) -> str:
    """A cache location read from the catalogue entry ``entry``. Under the catalogue root
    ``root`` it is used as it is; elsewhere only a local one, and only to read (a complete
    cache reused, ``--cache auto``): a run writes a cache outside the root, or reads one at a
    URL outside it, only when the user names it."""
    base = urls.resolved(root).rstrip("/") + "/"
    location = urls.resolved(cache)
    if location.startswith(base) and ".." not in location[len(base) :].split("/"):
        return location
    if writes or urls.local_path(location) is None:
        use = "written" if writes else "read at a URL"
        raise ManifestError(
            f"{entry}: field cache is {cache!r}, outside the catalogue root {root}; a cache "
            f"outside it is {use} only when given as the cache location"
        )
    return location


def recorded_teacher(cache: str, name: str, source: str) -> str:
    """The weights a cache's attrs record for teacher ``name``: a local file (relative paths
    against the cache's folder). A URL is never fetched because an attribute names it."""
    if urls.is_url(source) and urls.local_path(source) is None:
        raise ManifestError(
            f"{cache}: teachers/{name} field source is the URL {source!r}; a teacher recorded "
            "at a URL is not fetched (give its weights as NAME=PATH)"
        )
    return urls.join(urls.parent(cache), source)


def recorded_manifest(cache: str, recorded: str) -> str:
    """The manifest location a cache's attrs record (relative paths against the cache's
    folder). A URL is read only under the folder of a cache at a URL; any other is never
    fetched because an attribute names it."""
    folder = urls.parent(cache)
    if urls.is_url(recorded) and urls.local_path(recorded) is None:
        if not _url_under(recorded, folder):
            raise ManifestError(
                f"{cache}: dataset field manifest is the URL {recorded!r}, outside the cache's "
                "folder; a manifest recorded elsewhere is not fetched (give it with --data)"
            )
        return recorded
    return urls.join(folder, recorded)


def recorded_code(cache: str, name: str, field: str, reference: str | None,
                  allowed: tuple[str, ...]) -> None:  # fmt: skip
    """Refuse a ``module:function`` that a cache's attrs record for teacher ``name`` (a teacher
    factory, a key map) unless the command line allows it: naming code in an attribute must
    not make kdcache import and run it."""
    if reference and ":" in reference and reference not in allowed:
        raise ManifestError(
            f"{cache}: teachers/{name} field {field} names the code {reference!r}; it is "
            f"imported only when the command line allows it (--allow-code {reference})"
        )
