"""Storage options: one flag and one environment variable, merged; secrets never shown."""

import json
import subprocess
import sys

import pytest

from kdcache.errors import ConfigError
from kdcache.pipeline.data import storage
from kdcache.trainer.run import TrainConfig, train

SECRET = "kdcache-fake-secret-unit-3Hq"
OPTIONS = {"key": "AKIAUNITFAKE", "secret": SECRET, "client_kwargs": {"endpoint_url": "http://e"}}


def test_flag_json_file_and_environment_merge_with_the_flag_winning(tmp_path, monkeypatch):
    monkeypatch.setenv(storage.ENV, json.dumps({"anon": True, "client_kwargs": {"a": 1}}))
    path = tmp_path / "options.json"
    path.write_text(json.dumps(OPTIONS))
    for given in (json.dumps(OPTIONS), f"@{path}", str(path)):
        merged = storage.resolve(given)
        assert merged == {"anon": True, **OPTIONS}  # top-level keys: the flag's replace the env's
    with storage.using({"anon": False}):
        assert storage.current() == {"anon": False, "client_kwargs": {"a": 1}}
        assert storage.options_for("/local/path") == {} and storage.options_for("s3://b/x")
    assert storage.current() == {"anon": True, "client_kwargs": {"a": 1}}


def test_secrets_are_masked_in_configs_and_scrubbed_from_messages():
    config = TrainConfig(manifest="d", out="o", model="m", storage_options=OPTIONS)
    assert SECRET not in repr(config) and "AKIAUNITFAKE" not in str(config)
    shown = repr(storage.StorageOptions(OPTIONS))
    assert SECRET not in shown and "AKIAUNITFAKE" not in shown and "http://e" in shown
    assert storage.masked(OPTIONS)["client_kwargs"] == {"endpoint_url": "http://e"}
    assert storage.scrub(f"denied for {SECRET}", OPTIONS) == "denied for ***"


def test_unreadable_options_are_one_line_errors_that_never_quote_the_text(tmp_path):
    text = '{"secret": "' + SECRET + '",'
    for given, expected in ((text, "not JSON"), (str(tmp_path / "none.json"), "none.json")):
        result = subprocess.run(
            [sys.executable, "-m", "kdcache", "inspect", "x.zarr", "--storage-options", given],
            capture_output=True,
            text=True,
        )
        assert result.returncode == 2
        last = result.stderr.strip().splitlines()[-1]
        assert "--storage-options" in last and expected in last and SECRET not in result.stderr
    with pytest.raises(ConfigError, match="expected a JSON object, found list"):
        storage.resolve("[1]")


def test_tensorboard_into_an_object_store_run_folder_is_refused(data):
    config = TrainConfig(manifest=data.location, out="s3://bucket/run", model="resnet10t",
                         tensorboard=True, workers=0, progress=False)  # fmt: skip
    with pytest.raises(ConfigError, match="tensorboard write only to a local run folder"):
        train(config)
