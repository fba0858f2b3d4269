"""A run folder belongs to one run: ``train --out`` never clobbers another run's files.

A folder holding a run's files is refused unless the run continues it (``--resume``, whose
saved config must equal this run's: :func:`~trainer.run.resume.load_state`) or replaces it
(``--overwrite``: the old run's files are removed when the new run writes its config, not
before, so a run refused for its options leaves the old one whole). Every file of the folder
is written whole (temp file, then rename: :func:`kdcache.pipeline.data.urls.write_bytes`).
``--out`` may be a URL (``s3://bucket/run``, with the storage options): config, metrics,
checkpoints and the resumable state go there; TensorBoard and profiler traces need a local
folder.
"""

import json
import os
import shutil

from kdcache.errors import ConfigError, OutputError
from kdcache.pipeline.data import storage, urls
from kdcache.trainer.run.resume import RESUME_FILE

CONFIG_FILE = "config.json"
RUN_FILES = (
    CONFIG_FILE,
    "metrics.csv",
    "checkpoint.pth",
    "checkpoint-ema.pth",
    RESUME_FILE,
    "tensorboard",
    "profile",
)


def run_files(out: str) -> list[str]:
    """The run files present in ``out``."""
    return [name for name in RUN_FILES if urls.exists(urls.join(out, name))]


def claim_run_folder(
    out: str, *, resume: bool, overwrite: bool, local_only: list[str] | None = None
) -> None:
    """Check, before anything is computed, that this run may write ``out`` (made later, by
    :func:`write_run_config`: a run refused for its options leaves no folder). ``local_only``
    names the options asked for that write only to a local folder."""
    if urls.local_path(out) is None and local_only:
        raise ConfigError(
            f"out {out}: {' and '.join(local_only)} write only to a local run folder; "
            "drop them or train into a local out",
            field="out",
        )
    if resume and overwrite:
        raise ConfigError(
            "resume continues the run in out, overwrite replaces it: pick one", field="resume"
        )
    held = run_files(out)
    if held and not (resume or overwrite):
        raise OutputError(
            f"{out}: holds another run ({', '.join(held)}); continue it with resume (same "
            "options) or replace it with overwrite",
            field="out",
        )
    if urls.local_path(out) is None:  # an object store: writability shows at the first write
        return
    existing = os.path.abspath(urls.local_path(out))
    while not os.path.exists(existing):  # the folder is made when the config is written
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise OutputError(f"{out}: cannot make the run folder ({existing} is a file)")
    if not os.access(existing, os.W_OK):
        raise OutputError(f"{out}: cannot write the run folder ({existing} is not writable)")


def write_run_config(out: str, values: dict, *, overwrite: bool) -> None:
    """Make the folder and write ``config.json`` whole; with ``overwrite``, first remove the
    old run's files."""
    path = urls.local_path(out)
    if path is None:
        fs, folder = storage.filesystem(out)
        if overwrite:
            for name in run_files(out):
                fs.rm(urls.join(folder, name), recursive=True)
    else:
        if overwrite:
            for name in run_files(out):
                held = os.path.join(path, name)
                shutil.rmtree(held) if os.path.isdir(held) else os.remove(held)
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as error:
            raise OutputError(f"{out}: cannot make the run folder ({error.strerror})") from None
    text = json.dumps(values, indent=2)
    urls.write_bytes(urls.join(out, CONFIG_FILE), text.encode())
