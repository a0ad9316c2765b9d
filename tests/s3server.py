"""A real S3-compatible store for tests: moto's standalone server in a subprocess.

pyarrow's S3 client talks to it over HTTP as to any S3 endpoint, so tests of remote workdirs
exercise the real client code (requests, ranges, listings, errors) with nothing mocked.
`conftest.py` exposes it as the `s3_server` (per module) and `s3` (per test) fixtures.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs

ACCESS_KEY = SECRET_KEY = "testing"
REGION = "us-east-1"


@dataclass
class S3Server:
    endpoint: str  # http://127.0.0.1:PORT
    bucket: str
    env: dict[str, str]  # AWS_* variables that point a client (pyarrow, boto) at the server
    fs: pafs.S3FileSystem  # a client of its own, for assertions

    @property
    def host_port(self) -> str:
        return self.endpoint.split("://", 1)[1]

    def uri(self, key: str = "") -> str:
        return f"s3://{self.bucket}/{key}".rstrip("/")

    def key(self, key: str) -> str:
        """The pyarrow path ("bucket/key") of `key`."""
        return f"{self.bucket}/{key}"

    def put(self, key: str, data: bytes | str) -> None:
        with self.fs.open_output_stream(self.key(key)) as out:
            out.write(data.encode() if isinstance(data, str) else data)

    def get(self, key: str) -> bytes:
        with self.fs.open_input_stream(self.key(key)) as f:
            return f.read()

    def files(self, prefix: str = "") -> list[str]:
        """Keys of every object under `prefix` (directory markers left out), sorted."""
        infos = self.fs.get_file_info(pafs.FileSelector(
            self.key(prefix).rstrip("/"), recursive=True, allow_not_found=True))
        return sorted(i.path.split("/", 1)[1] for i in infos if i.type == pafs.FileType.File)

    def clear(self) -> None:
        """Empty the bucket."""
        self.fs.delete_dir_contents(self.bucket, missing_dir_ok=True)

    def activate(self, monkeypatch, cache: Path) -> None:
        """Point this process at the server for one test: the AWS_* variables, RAYSOUP_CACHE
        = `cache`, and no pyarrow filesystem cached by raysoup.storage for another endpoint
        (the cache key is the bucket, not the endpoint). `monkeypatch` restores the
        variables; the caller clears raysoup's cache again afterwards."""
        from raysoup import storage

        for name, value in self.env.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv(storage.CACHE_ENV, str(cache))
        storage._filesystem.cache_clear()


def _port(log: Path) -> int | None:
    m = re.search(r"Running on http://127\.0\.0\.1:(\d+)", log.read_text(errors="replace"))
    return int(m.group(1)) if m else None


@contextlib.contextmanager
def s3_server(workdir: Path, bucket: str = "raysoup-test",
              timeout: float = 60.0) -> Iterator[S3Server]:
    """Run a moto S3 server on 127.0.0.1 (a free port the server picks itself, so no race
    with other processes), create `bucket`, yield it, and stop the server."""
    log_path = workdir / "moto.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", "0"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout
        port = None
        while True:
            port = port or _port(log_path)
            if port is not None:
                try:  # any HTTP answer (ListBuckets) means it serves
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2):
                        break
                except OSError:
                    pass
            if proc.poll() is not None:
                raise RuntimeError(f"moto S3 server exited with status {proc.returncode}:\n"
                                   f"{log_path.read_text(errors='replace')}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"moto S3 server did not answer within {timeout:.0f} s:\n"
                                   f"{log_path.read_text(errors='replace')}")
            time.sleep(0.1)
        endpoint = f"http://127.0.0.1:{port}"
        fs = pafs.S3FileSystem(access_key=ACCESS_KEY, secret_key=SECRET_KEY, region=REGION,
                               endpoint_override=f"127.0.0.1:{port}", scheme="http",
                               allow_bucket_creation=True)
        fs.create_dir(bucket)
        env = {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_EC2_METADATA_DISABLED": "true",  # no instance-metadata probes (timeouts)
        }
        yield S3Server(endpoint=endpoint, bucket=bucket, env=env, fs=fs)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
