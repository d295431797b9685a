"""The config file: every setting is a typed field; a misspelt or mistyped one is an error."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cubby.config import Config, ConfigError, load
from tests.helpers.live_server import ROOT
from tests.helpers.unprivileged import reachable_folder, with_permissions


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_typed_settings_are_read(tmp_path: Path) -> None:
    path = write(tmp_path, 'public_url = "https://files.example.org"\nsync_cache_mb = 64\n'
                           'trusted_proxies = ["10.0.0.0/8"]\ndata_dir = "~/cubby"\n')
    cfg = load({}, path)
    assert cfg.public_url == "https://files.example.org"
    assert cfg.sync_cache_mb == 64.0 and isinstance(cfg.sync_cache_mb, float)
    assert cfg.trusted_proxies == ("10.0.0.0/8",)
    assert cfg.data_dir == Path("~/cubby").expanduser()


def test_a_sharded_deployment_is_read_from_a_table_or_a_list(tmp_path: Path) -> None:
    path = write(tmp_path, 'directory_url = "postgresql://h/dir"\nplace_new = "b"\n'
                           '[shards]\na = "postgresql://h/a"\nb = "mysql://h/b"\n')
    cfg = load({}, path)
    assert cfg.metadata_url == "postgresql://h/dir" and cfg.place_new == "b"
    assert cfg.shard_urls == {"a": "postgresql://h/a", "b": "mysql://h/b"}
    listed = load({}, write(tmp_path, 'db_url = "postgresql://h/one"\nshards = ["main=postgresql://h/one"]\n'))
    assert listed.metadata_url == "postgresql://h/one" and listed.shard_urls == {"main": "postgresql://h/one"}
    assert load({}, write(tmp_path, 'db_url = "postgresql://h/one"\n')).shard_urls == {}


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, 'url = "http://a:1"\n')
    assert load({"CUBBY_URL": "http://b:2"}, path).url == "http://b:2"


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('public_ulr = "https://x"\n', "unknown setting 'public_ulr'"),
        ('sync_cache_mb = "lots"\n', "must be a number"),
        ("port = true\n", "must be a number"),
        ("auto_accept_shares = 1\n", "must be true or false"),
        ('trusted_proxies = "10.0.0.1"\n', "must be a list"),
        ("public_url = 3\n", "must be a string"),
        ("public_url = \n", "not valid TOML"),
        ('shards = ["nameless"]\n', "a shard is NAME=URL"),
        ('[shards]\na = "x"\n"b c" = "y"\n', "a shard is NAME=URL"),
    ],
)
def test_bad_settings_are_errors_that_name_them(tmp_path: Path, text: str, words: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load({}, path)
    assert words in err.value.message and str(path) in err.value.message


def test_no_file_gives_the_defaults(tmp_path: Path) -> None:
    assert load({"XDG_CONFIG_HOME": str(tmp_path)}) == Config()


def test_the_cli_reports_a_bad_config_file_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "cubby").mkdir()
    (tmp_path / "cubby" / "config.toml").write_text('colour = "blue"\n')
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path), "PYTHONPATH": str(ROOT / "src")}
    r = subprocess.run([sys.executable, "-m", "cubby", "ls", "/"], env=env, capture_output=True, text=True, check=False)
    assert r.returncode == 2
    assert "unknown setting 'colour'" in r.stderr and "[bad_config]" in r.stderr
    assert "Traceback" not in r.stderr


def test_an_unreadable_config_file_is_an_error_that_names_it() -> None:
    with reachable_folder() as base:
        (base / "cubby").mkdir(mode=0o755)
        (base / "cubby").chmod(0o755)
        config = base / "cubby" / "config.toml"
        config.write_text('url = "http://127.0.0.1:1"\n')
        config.chmod(0o000)
        env = {**os.environ, "XDG_CONFIG_HOME": str(base), "PYTHONPATH": str(ROOT / "src")}
        r = subprocess.run(
            [*with_permissions(), sys.executable, "-m", "cubby", "ls", "/"], env=env, capture_output=True, text=True, check=False
        )
    assert r.returncode == 2
    assert f"cannot read the configuration file {config}" in r.stderr and "[bad_config]" in r.stderr
    assert "Traceback" not in r.stderr
