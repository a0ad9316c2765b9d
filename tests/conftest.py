import os

import pytest

os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "1")


@pytest.fixture(scope="session")
def ray_session():
    """One real local Ray cluster for the whole test session (start-up costs ~3 s)."""
    import ray

    if not ray.is_initialized():
        # "local": a fresh cluster, never one another process started on this machine.
        ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False,
                 log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory):
    """A real moto S3 server with one bucket, for the module (tests/s3server.py)."""
    from s3server import s3_server

    with s3_server(tmp_path_factory.mktemp("s3-server")) as server:
        yield server


@pytest.fixture
def s3(s3_server, tmp_path, monkeypatch):
    """s3_server with an empty bucket, and this test's environment pointed at it: AWS_*
    variables, RAYSOUP_CACHE=tmp_path/cache, no raysoup filesystem cached for another endpoint."""
    from raysoup import storage

    s3_server.clear()
    s3_server.activate(monkeypatch, tmp_path / "cache")
    yield s3_server
    storage._filesystem.cache_clear()


@pytest.fixture(scope="session")
def imagenet_fixture(tmp_path_factory):
    """The ImageNet-shaped fixture (raysoup/data/fixture.py), generated once per session:
    {role: path}, with the root as "root"."""
    from raysoup.data.fixture import write_imagenet_fixture

    root = tmp_path_factory.mktemp("imagenet-fixture")
    return {**write_imagenet_fixture(root), "root": str(root)}
