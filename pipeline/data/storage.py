"""Storage options: how fsspec reaches object storage (endpoint, credentials, region, anonymous).

A process has one set, from the ``KDCACHE_STORAGE_OPTIONS`` environment variable (JSON) merged
with a command's ``--storage-options`` or a public function's ``storage_options=`` (their keys
win), made current by :func:`using` for the length of a command. Every fsspec, Zarr and
Parquet open of a URL takes them from :func:`filesystem` or :func:`current`; local paths get
none. Ray actors get them in the config they are started with (not through a ``runtime_env``:
Ray's runtime-env agent logs its environment variables in clear) and DataLoader workers
through ``worker_init_fn`` (:func:`adopt`); both open their own filesystems.

Secrets are never shown: a :class:`StorageOptions` prints its secret values as ``***``, and
:func:`scrub` removes them from any message.
"""

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from kdcache._options import option
from kdcache.errors import ConfigError

ENV = "KDCACHE_STORAGE_OPTIONS"
MASK = "***"
_SECRET_WORDS = ("secret", "key", "token", "password", "credential", "session", "sas")


def _is_secret(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in _SECRET_WORDS) and lowered != "key_prefix"


def masked(options: Any) -> Any:
    """``options`` with every secret value (keys naming a key, secret, token, password,
    credential or session, at any depth) replaced by ``***``."""
    if isinstance(options, dict):
        return {
            k: MASK if _is_secret(str(k)) and not isinstance(v, dict) else masked(v)
            for k, v in options.items()
        }
    if isinstance(options, list | tuple):
        return [masked(v) for v in options]
    return options


def _secret_values(options: Any) -> list[str]:
    if isinstance(options, dict):
        found = []
        for k, v in options.items():
            if isinstance(v, dict | list | tuple):
                found += _secret_values(v)
            elif _is_secret(str(k)) and v not in (None, "", True, False):
                found.append(str(v))
        return found
    if isinstance(options, list | tuple):
        return [s for v in options for s in _secret_values(v)]
    return []


class StorageOptions(dict):
    """fsspec storage options, e.g. ``{"key": ..., "secret": ...,
    "client_kwargs": {"endpoint_url": ...}}``; built from a dict, JSON text, ``@FILE`` or
    the path of a JSON file. Shown with its secrets masked."""

    def __init__(self, value: Any = None):
        if isinstance(value, str):
            value = _parse(value)
        super().__init__(value or {})

    def __repr__(self) -> str:
        return f"StorageOptions({masked(dict(self))!r})"

    __str__ = __repr__


def _parse(text: str) -> dict:
    """Options from JSON text, ``@FILE`` or a JSON file's path; errors never quote the text."""
    where = "--storage-options"
    stripped = text.strip()
    if stripped.startswith("@") or (stripped and stripped[0] not in "{["):
        path = stripped.removeprefix("@")
        where = f"storage options file {path}"
        try:
            with open(path) as f:
                stripped = f.read()
        except OSError as error:
            raise ConfigError(
                f"{where}: cannot read it ({error.strerror}); expected JSON text "
                '(e.g. {"anon": true}), @FILE or the path of a JSON file'
            ) from None
    return _json_object(stripped, where)


def _json_object(text: str, where: str) -> dict:
    """The JSON object ``text`` holds; an error names ``where`` and never quotes the text."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:  # its message holds no part of the text
        raise ConfigError(
            f"{where}: not JSON ({error.msg} at line {error.lineno}, column {error.colno})"
        ) from None
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a JSON object, found {type(value).__name__}")
    return value


def storage_option() -> Any:
    """The ``storage_options`` field of a config (``--storage-options``), declared once."""
    return option(
        None,
        metavar="JSON|@FILE",
        help="fsspec options for s3:// and other URLs (endpoint, key, secret, region, anon) "
        f"as JSON, @FILE or a JSON file's path; merged over ${ENV} (JSON), whose keys these "
        "replace. Never written or printed",
        shown=False,
    )


def remote_shards_option(**extra) -> Any:
    """The ``allow_remote_shards`` field of a config (``--allow-remote-shards``), declared once."""
    return option(False, help="read shard files the manifest lists outside its own folder "
                  "(absolute paths, URLs elsewhere), e.g. tars kdcache index left where they are",
                  **extra)  # fmt: skip


@dataclass(frozen=True)
class StorageConfig:
    """The storage options alone: the option of commands without a config of their own
    (``inspect``, ``verify``, ``catalog``)."""

    storage_options: StorageOptions | None = storage_option()


@dataclass(frozen=True)
class CacheReadConfig(StorageConfig):
    """The options of commands that read a cache and its manifest (``inspect``, ``verify``)."""

    allow_remote_shards: bool = remote_shards_option()


def from_env() -> dict:
    """The options in ``$KDCACHE_STORAGE_OPTIONS`` (none if unset or empty)."""
    text = os.environ.get(ENV, "").strip()
    return _json_object(text, f"${ENV}") if text else {}


def resolve(options: dict | str | None = None) -> StorageOptions:
    """The environment's options with ``options`` (a dict, JSON, ``@FILE``) merged over them."""
    given = StorageOptions(options)
    return StorageOptions(from_env() | given)


_current: StorageOptions | None = None


def current() -> StorageOptions:
    """The options in force: those :func:`using` set, else the environment's."""
    return _current if _current is not None else resolve()


@contextlib.contextmanager
def using(options: dict | str | None) -> Iterator[StorageOptions]:
    """Make ``options`` (over the environment's) current for the block; nested blocks without
    options of their own keep the outer ones."""
    global _current
    previous = _current
    _current = resolve(options) if options or previous is None else previous
    try:
        yield _current
    finally:
        _current = previous


def adopt(options: dict) -> None:
    """Make ``options`` this process's current ones for good: a DataLoader worker's
    ``worker_init_fn``, whatever the start method."""
    global _current
    _current = StorageOptions(options)


def _local(location: str) -> bool:
    return "://" not in location or location.startswith("file://")


def options_for(location: str) -> dict:
    """The options fsspec (or Zarr's ``storage_options``) needs for ``location``."""
    return {} if _local(location) else with_defaults(location, dict(current()))


S3_DEFAULTS = {
    # s3fs (max_concurrency > 1) asks an object's size with a HEAD before reading it whole, to
    # split large objects into parallel ranged GETs; a cache's objects (a view block of one
    # array, a ledger row) are far smaller than its 50 MB blocks, so that HEAD only doubles the
    # requests: one GET per whole object instead
    "max_concurrency": 1,
}


def with_defaults(location: str, options: dict) -> dict:
    """``options`` over kdcache's defaults for ``location``'s protocol (the user's win)."""
    protocol = location.split("://", 1)[0] if "://" in location else ""
    return (S3_DEFAULTS | options) if protocol in ("s3", "s3a") else options


def filesystem(location: str):
    """``(fs, path)`` of ``location`` with the current options."""
    import fsspec

    return fsspec.core.url_to_fs(location, **options_for(location))


def open_file(location: str, mode: str = "rb"):
    """An fsspec file at ``location`` opened with the current options (a context manager)."""
    import fsspec

    return fsspec.open(location, mode, **options_for(location))


def scrub(text: str, options: dict | None = None) -> str:
    """``text`` with every secret value of ``options``, the current options and the
    environment's replaced by ``***``."""
    try:
        environment = from_env()
    except ConfigError:
        environment = {}
    secrets = _secret_values([options or {}, dict(_current or {}), environment])
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text
