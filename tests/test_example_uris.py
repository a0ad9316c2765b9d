"""Every workdir URI the shipped experiments suggest (in comments, too) is one the URI parser
accepts, and a `region` query reaches pyarrow (no network lookup of the bucket's region)."""

import re
from pathlib import Path

import pytest

from raysoup import storage

ROOT = Path(__file__).resolve().parents[1]
URI = re.compile(r"\b(?:s3|gs)://[^\s'\"]+")


def example_uris() -> list[tuple[str, str]]:
    found = []
    for path in sorted((ROOT / "experiments").glob("*.yaml")):
        for line in path.read_text().splitlines():
            found += [(path.name, uri) for uri in URI.findall(line)]
    return found


@pytest.fixture
def clean_env(monkeypatch):
    monkeypatch.delenv(storage.ENDPOINT_ENV, raising=False)
    storage._filesystem.cache_clear()
    yield
    storage._filesystem.cache_clear()


def test_the_experiments_suggest_a_workdir_uri():
    assert any(uri.startswith("s3://") for _, uri in example_uris())


@pytest.mark.parametrize(("file", "uri"), example_uris())
def test_every_example_workdir_uri_parses(clean_env, file, uri):
    mirror = storage.mirror_of(uri)
    assert storage.uri_of(mirror) == uri.split("?", 1)[0].rstrip("/")


def test_region_query_reaches_the_filesystem(clean_env):
    uri = "s3://raysoup-no-such-bucket/runs/x?region=us-west-2"
    mirror = storage.mirror_of(uri)
    assert storage.uri_of(mirror) == "s3://raysoup-no-such-bucket/runs/x"
    fs, key = storage.remote(mirror)  # with a region, opening the store asks no server
    assert fs.region == "us-west-2" and key == "raysoup-no-such-bucket/runs/x"
