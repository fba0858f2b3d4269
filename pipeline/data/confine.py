"""Where a file kdcache reads may send it: every location named inside a data file (a
manifest's shard files, a catalogue row's cache, a cache's teacher source) is checked here
against the root it must stay under, so an edited file cannot make kdcache read, write or
fetch elsewhere. Each check raises :class:`ManifestError` naming the file and field."""

import os
import posixpath
import stat

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
            "files are paths relative to the manifest (allow_remote_shards to read it)",
            field="allow_remote_shards",
        )
    if allow_remote and (file.startswith("/") or urls.is_url(file)):
        return file
    normal = posixpath.normpath(file)
    if file.startswith("/") or urls.is_url(file) or normal == ".." or normal.startswith("../"):
        raise ManifestError(
            f"{manifest}: shard file {file!r} leaves the manifest's folder; shard files are "
            "paths relative to it, without '..' (allow_remote_shards to read files elsewhere)",
            field="allow_remote_shards",
        )
    return urls.join(folder, normal)


def _url_under(url: str, folder: str) -> bool:
    """Whether ``url`` lies under ``folder``, itself a URL, without a ``..`` step (and
    without ``%``: a client may decode ``%2E%2E`` into one)."""
    inside = urls.is_url(folder) and url.startswith(folder.rstrip("/") + "/")
    return inside and ".." not in url.split("/") and "%" not in url[len(folder) :]


def catalogued_cache(root: str, cache: str, entry: str, *, writes: bool) -> str:
    """A cache location read from the catalogue entry ``entry``: used only under the catalogue
    root ``root`` (no ``..`` leaving it). A cache elsewhere is read or written only when the
    user names it as the cache location; an edited row cannot pick it (``writes`` says, in the
    message, what the run would have done)."""
    base = urls.resolved(root).rstrip("/") + "/"
    location = urls.resolved(cache)
    if location.startswith(base) and ".." not in location[len(base) :].split("/"):
        return location
    use = "written" if writes else "read"
    raise ManifestError(
        f"{entry}: field cache is {cache!r}, outside the catalogue root {root}; a cache "
        f"outside it is {use} only when given as the cache location",
        field="cache",
    )


def recorded_teacher(cache: str, name: str, source: str) -> str:
    """The weights a cache's attrs record for teacher ``name``: a regular file inside the
    cache's folder (relative paths against it). Anything else — a URL, a path leaving the
    folder, a FIFO or device — is never read because an attribute names it."""
    where = f"{cache}: teachers/{name} field source"
    if urls.is_url(source) and urls.local_path(source) is None:
        raise ManifestError(
            f"{where} is the URL {source!r}; a teacher recorded at a URL is not fetched (give "
            "its weights as NAME=PATH)",
            field="teacher",
        )
    return _inside_cache_folder(cache, source, where, "give its weights as NAME=PATH", "teacher")


def recorded_manifest(cache: str, recorded: str) -> str:
    """The manifest location a cache's attrs record: a regular file inside the cache's folder
    (relative paths against it), or a URL under the folder of a cache at a URL. Any other is
    never read because an attribute names it."""
    folder = urls.parent(cache)
    where = f"{cache}: dataset field manifest"
    if urls.is_url(recorded) and urls.local_path(recorded) is None:
        if not _url_under(recorded, folder):
            raise ManifestError(
                f"{where} is the URL {recorded!r}, outside the cache's folder; a manifest "
                "recorded elsewhere is not fetched (name the manifest)",
                field="data",
            )
        return recorded
    if not recorded.endswith(".parquet"):  # a dataset folder, as Manifest.read takes it
        recorded = urls.join(recorded, "manifest.parquet")
    return _inside_cache_folder(cache, recorded, where, "give it with --data", "data")


def _inside_cache_folder(cache: str, recorded: str, where: str, hint: str, field: str) -> str:
    """``recorded`` against the cache's folder, refused (naming ``where``) unless it stays in
    that folder (symlinks resolved) and, if it exists, is a regular file; checked without
    opening it, so a FIFO cannot hang the reader."""
    folder = urls.parent(cache)
    location = urls.join(folder, recorded)
    base, path = urls.local_path(folder), urls.local_path(location)
    if base is None:  # a cache at a URL: only a relative path under its folder
        if path is None and _url_under(location, folder):
            return location
        path = None
    else:
        base = os.path.realpath(base)
        path = os.path.realpath(path) if path is not None else None
    if path is None or os.path.commonpath([base, path]) != base:
        raise ManifestError(
            f"{where} is {recorded!r}, outside the cache's folder {folder}; a file recorded "
            f"outside it is read only when the user names it ({hint})",
            field=field,
        )
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return location  # the reader says it is missing
    if not stat.S_ISREG(mode):
        raise ManifestError(
            f"{where} is {recorded!r}: not a regular file; refusing to read it", field=field
        )
    return location


def recorded_code(cache: str, name: str, field: str, reference: str | None,
                  allowed: tuple[str, ...]) -> None:  # fmt: skip
    """Refuse a ``module:function`` that a cache's attrs record for teacher ``name`` (a teacher
    factory, a key map) unless the command line allows it: naming code in an attribute must
    not make kdcache import and run it."""
    if reference and ":" in reference and reference not in allowed:
        raise ManifestError(
            f"{cache}: teachers/{name} field {field} names the code {reference!r}; it is "
            f"imported only when the user allows that code (allow_code {reference})",
            field="allow_code",
        )
