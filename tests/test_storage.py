"""raysoup/storage.py against a real S3 server (moto, tests/s3server.py): URI <-> mirror
mapping, reads of remote objects and of plain local paths, listings, publish (markers last,
stale objects removed), pull, ranged reads and delete.

These are the primitives every remote-workdir code path stands on, so they are tested over
real HTTP with pyarrow's S3 client; the only stand-in is a spy on `_upload` that records
the order of uploads.
"""

import os
import signal
import threading
import time

import pytest

from raysoup import faults, storage
from raysoup.storage import MARKERS, StorageError


def test_mirror_and_uri_round_trip(s3, tmp_path):
    cache = tmp_path / "cache"
    uri = s3.uri("runs/exp1")
    mirror = storage.mirror_of(uri)
    assert mirror == cache / "raysoup-mirror" / "s3" / s3.bucket / "runs" / "exp1"
    assert storage.mirror_of(uri + "/") == mirror
    assert storage.uri_of(mirror) == uri
    assert storage.uri_of(mirror / "ingredients" / "t1" / "manifest.json") == (
        uri + "/ingredients/t1/manifest.json")
    assert storage.is_remote(mirror) and storage.display(mirror) == uri
    # The bucket root is a workdir too; gs:// maps the same way.
    assert storage.uri_of(storage.mirror_of(s3.uri())) == s3.uri()
    assert storage.uri_of(storage.mirror_of("gs://b/k/v")) == "gs://b/k/v"
    # Not a mirror: the cache itself, a plain directory, a relative path.
    for local in (cache / "raysoup-mirror" / "s3", tmp_path / "runs", "runs/exp1"):
        assert storage.uri_of(local) is None and not storage.is_remote(local)
        assert storage.display(local) == str(local)


def _endpoint(fs) -> str:
    return fs.__reduce__()[1][0]["endpoint_override"]


def test_endpoint_override_query_reaches_the_server(s3, monkeypatch):
    # The query's endpoint wins over AWS_ENDPOINT_URL (nothing listens on port 9), for this
    # URI's filesystem only: the environment is left as it was.
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    storage._filesystem.cache_clear()
    uri = s3.uri("q")
    mirror = storage.mirror_of(f"{uri}?endpoint_override={s3.host_port}&scheme=http")
    assert storage.uri_of(mirror) == uri and storage.display(mirror) == uri
    assert os.environ["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9"
    s3.put("q/hello.txt", "hi")
    assert storage.read_text(mirror / "hello.txt") == "hi"
    # Another node maps the same path to the same store, from the path alone.
    storage._filesystem.cache_clear()
    assert storage.read_text(mirror / "hello.txt") == "hi"


def test_a_data_uri_override_leaves_the_workdir_store_alone(s3):
    # Issue 30 item 2: resolving a data URI on another store pointed the workdir's
    # filesystem (and AWS_ENDPOINT_URL) at that store.
    from raysoup.data import fs as data_fs

    env = dict(os.environ)
    workdir = storage.mirror_of(s3.uri("w"))
    storage.write_file(workdir / "a.txt", "workdir")
    before, _ = storage.remote(workdir)
    data, key = data_fs.resolve(
        "s3://datasets/imagenet?endpoint_override=minio.internal:9000&scheme=http"
        "&region=us-east-1")
    assert _endpoint(data).endswith("minio.internal:9000") and key == "datasets/imagenet"
    assert dict(os.environ) == env
    after, _ = storage.remote(workdir)
    assert after is before and _endpoint(after) == s3.endpoint  # AWS_ENDPOINT_URL's
    assert storage.read_text(workdir / "a.txt") == "workdir"
    # A bucket of the same name on the other store has a mirror of its own.
    other = storage.mirror_of(f"{s3.uri('w')}?endpoint_override=minio.internal:9000")
    assert other != workdir and storage.uri_of(other) == storage.uri_of(workdir)
    assert _endpoint(storage.remote(other)[0]) == "minio.internal:9000"


@pytest.mark.parametrize(("uri", "message"), [
    ("s3://b/p?endpoint=127.0.0.1:9000", "unsupported query options ['endpoint']"),
    ("s3://b/p?endpoint_override=127.0.0.1:9000&regoin=x", "unsupported query options"),
    ("s3://b/p?region=us/west", "expected a name like us-west-2"),
    ("gs://b/p?region=us-west-2", "region applies to s3:// only"),
    ("s3://b/p?endpoint_override=127.0.0.1:9000&scheme=ftp", "scheme"),
    ("file:///tmp/p", "expected s3://bucket/prefix"),
    ("https://b/p", "expected s3://bucket/prefix"),
    ("s3:///p", "expected s3://bucket/prefix"),
    ("s3://b/p/../q", "'..' is not allowed"),
])
def test_bad_uris_are_rejected(s3, uri, message):
    with pytest.raises(StorageError) as err:
        storage.mirror_of(uri)
    assert str(err.value).startswith(uri) and message in str(err.value)
    assert os.environ["AWS_ENDPOINT_URL"] == s3.endpoint  # a rejected URI changes nothing


def test_reads_of_remote_objects(s3):
    root = storage.mirror_of(s3.uri("w"))
    s3.put("w/a.json", '{"x": 1}')
    s3.put("w/sub/b.bin", b"\x00\x01\x02")
    size, mtime_ns = storage.stat(root / "a.json")
    assert size == 8 and abs(mtime_ns - time.time_ns()) < 600e9
    assert storage.stat(root / "sub" / "b.bin")[0] == 3
    assert storage.read_text(root / "a.json") == '{"x": 1}'
    assert storage.read_bytes(root / "sub" / "b.bin") == b"\x00\x01\x02"
    assert storage.is_file(root / "a.json") and not storage.is_dir(root / "a.json")
    assert storage.is_dir(root / "sub") and storage.is_dir(root) and not storage.is_file(root)
    for missing in (root / "nope.json", root / "su"):  # "su" is a prefix of "sub", not a dir
        assert storage.stat(missing) is None
        assert not storage.is_file(missing) and not storage.is_dir(missing)
    assert storage.stat(root / "sub") is None
    assert not root.exists()  # reads never touch the mirror


def test_reads_of_local_paths(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.json").write_text('{"x": 1}')
    (tmp_path / "sub" / "b.bin").write_bytes(b"\x00\x01\x02")
    st = os.stat(tmp_path / "a.json")
    assert storage.stat(tmp_path / "a.json") == (8, st.st_mtime_ns)
    assert storage.stat(tmp_path / "sub") is None and storage.stat(tmp_path / "nope") is None
    assert storage.is_file(tmp_path / "a.json") and not storage.is_file(tmp_path / "sub")
    assert storage.is_dir(tmp_path / "sub") and not storage.is_dir(tmp_path / "a.json")
    assert storage.read_text(str(tmp_path / "a.json")) == '{"x": 1}'
    assert storage.read_bytes(tmp_path / "sub" / "b.bin") == b"\x00\x01\x02"
    assert storage.list_files(tmp_path) == ["a.json", "sub/b.bin"]
    assert storage.list_files(tmp_path / "nope") == []
    # The remote-only operations leave local paths alone.
    storage.publish(tmp_path)
    storage.pull(tmp_path)
    storage.delete(tmp_path / "a.json")
    assert (tmp_path / "a.json").read_text() == '{"x": 1}'
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(tmp_path / "nope")


def test_missing_object_errors_name_the_uri(s3):
    path = storage.mirror_of(s3.uri("w/ingredients/t1/manifest.json"))
    uri = s3.uri("w/ingredients/t1/manifest.json")
    for read in (storage.read_bytes, storage.read_text, storage.open_input):
        with pytest.raises(FileNotFoundError, match=f"^{uri}: no such object$"):
            read(path)
    # A directory is not an object either.
    s3.put("w/ingredients/t1/model.safetensors", b"x")
    with pytest.raises(FileNotFoundError, match="t1: no such object"):
        storage.read_bytes(path.parent)


def test_list_files(s3):
    for key in ("run1/ingredients/t1/manifest.json", "run1/ingredients/t1/model.safetensors",
                "run1/ingredients/t2/manifest.json", "run1/plan.json",
                "run10/plan.json", "run1.json"):  # siblings sharing the prefix "run1"
        s3.put(key, "{}")
    root = storage.mirror_of(s3.uri("run1"))
    assert storage.list_files(root) == [
        "ingredients/t1/manifest.json", "ingredients/t1/model.safetensors",
        "ingredients/t2/manifest.json", "plan.json"]
    assert storage.list_files(root / "ingredients" / "t3") == []
    assert storage.list_files(storage.mirror_of(s3.uri())) == [
        "run1.json", "run1/ingredients/t1/manifest.json", "run1/ingredients/t1/model.safetensors",
        "run1/ingredients/t2/manifest.json", "run1/plan.json", "run10/plan.json"]


def test_publish_file(s3):
    path = storage.mirror_of(s3.uri("w/journal.json"))
    path.parent.mkdir(parents=True)
    path.write_text("[1]")
    storage.publish(path)
    assert s3.get("w/journal.json") == b"[1]"
    path.write_text("[1, 2]")
    storage.publish(path)
    assert s3.get("w/journal.json") == b"[1, 2]"
    assert storage.read_text(path) == "[1, 2]"


@pytest.fixture
def upload_log(s3, monkeypatch):
    """Records each `_upload` key, with the remote markers of that directory seen at the time."""
    log = []
    upload = storage._upload

    def spy(fs, src, key, *args, **kwargs):
        folder = key.rsplit("/", 1)[0]
        present = [m for m in MARKERS if fs.get_file_info(f"{folder}/{m}").is_file]
        log.append((key.split("/", 1)[1], present))
        return upload(fs, src, key, *args, **kwargs)

    monkeypatch.setattr(storage, "_upload", spy)
    return log


def test_publish_directory_uploads_markers_last(s3, upload_log):
    soup = storage.mirror_of(s3.uri("w/soups/greedy"))
    files = {"model-00001.safetensors": b"a" * 100, "model-00002.safetensors": b"b" * 50,
             "extra/notes.txt": b"n", **{m: m.encode() for m in MARKERS}}
    for rel, data in files.items():
        (soup / rel).parent.mkdir(parents=True, exist_ok=True)
        (soup / rel).write_bytes(data)
    storage.publish(soup)

    keys = [key for key, _ in upload_log]
    assert sorted(keys) == sorted(f"w/soups/greedy/{rel}" for rel in files)
    assert keys[-len(MARKERS):] == [f"w/soups/greedy/{m}" for m in MARKERS]
    # Nothing marked complete remotely while data files were still going up.
    assert all(present == [] for key, present in upload_log[:-len(MARKERS)])
    assert {rel: s3.get(f"w/soups/greedy/{rel}") for rel in files} == files


def test_republish_replaces_the_remote_directory(s3, upload_log):
    soup = storage.mirror_of(s3.uri("w/soups/greedy"))
    soup.mkdir(parents=True)
    for name in ("stale.safetensors", "model.safetensors", "manifest.json"):
        (soup / name).write_text(f"old {name}")
    storage.publish(soup)
    upload_log.clear()

    (soup / "stale.safetensors").unlink()
    (soup / "model.safetensors").write_text("new weights")
    (soup / "manifest.json").write_text("new manifest")
    storage.publish(soup)
    assert s3.files("w/soups/greedy") == ["w/soups/greedy/manifest.json",
                                          "w/soups/greedy/model.safetensors"]
    assert s3.get("w/soups/greedy/model.safetensors") == b"new weights"
    assert s3.get("w/soups/greedy/manifest.json") == b"new manifest"
    # The old copy (and its marker) was gone before the first new upload.
    assert upload_log[0] == ("w/soups/greedy/model.safetensors", [])


def test_publish_bucket_root_keeps_the_bucket(s3):
    root = storage.mirror_of(s3.uri())
    s3.put("stale.json", "{}")
    (root / "w").mkdir(parents=True)
    (root / "w" / "plan.json").write_text("{}")
    storage.publish(root)
    assert s3.files() == ["w/plan.json"]
    storage.delete(root)
    assert s3.files() == []
    assert storage.is_dir(root)  # the bucket itself is still there


def test_publish_to_a_missing_bucket_names_the_uri(s3):
    path = storage.mirror_of("s3://no-such-bucket/w/plan.json")
    path.parent.mkdir(parents=True)
    path.write_text("{}")
    with pytest.raises(StorageError, match="^s3://no-such-bucket/w/plan.json: upload failed"):
        storage.publish(path)


def test_publish_missing_only_adds(s3, upload_log):
    cache = storage.mirror_of(s3.uri("w/data"))
    s3.put("w/data/remote-only.txt", "r")
    s3.put("w/data/same.bin", "1234")
    s3.put("w/data/resized.bin", "12")
    for name, data in (("same.bin", "abcd"), ("resized.bin", "abcd"), ("new.bin", "n"),
                       ("manifest.json", "{}")):
        (cache / name).parent.mkdir(parents=True, exist_ok=True)
        (cache / name).write_text(data)
    assert storage.publish_missing(cache) == 3
    assert [key for key, _ in upload_log] == [
        "w/data/new.bin", "w/data/resized.bin", "w/data/manifest.json"]
    assert s3.files("w/data") == ["w/data/manifest.json", "w/data/new.bin",
                                  "w/data/remote-only.txt", "w/data/resized.bin",
                                  "w/data/same.bin"]
    assert s3.get("w/data/same.bin") == b"1234"  # same size: left alone
    assert storage.publish_missing(cache) == 0


def test_pull_downloads_a_tree_and_refreshes_changed_files(s3):
    s3.put("w/ingredients/t1/manifest.json", '{"bytes": 3}')
    s3.put("w/ingredients/t1/model.safetensors", b"abc")
    s3.put("w/plan.json", "{}")
    root = storage.mirror_of(s3.uri("w"))
    storage.pull(root / "ingredients")
    t1 = root / "ingredients" / "t1"
    assert (t1 / "manifest.json").read_text() == '{"bytes": 3}'
    assert (t1 / "model.safetensors").read_bytes() == b"abc"
    assert not (root / "plan.json").exists()  # only the subtree asked for

    # Same size: taken as unchanged and not downloaded again; another size is refreshed.
    (t1 / "model.safetensors").write_bytes(b"xyz")
    s3.put("w/ingredients/t1/manifest.json", '{"bytes": 30}')
    storage.pull(root)
    assert (t1 / "model.safetensors").read_bytes() == b"xyz"
    assert (t1 / "manifest.json").read_text() == '{"bytes": 30}'
    assert (root / "plan.json").read_text() == "{}"
    assert sorted(p.name for p in root.rglob("*") if p.is_file()) == [
        "manifest.json", "model.safetensors", "plan.json"]  # no .part files left

    s3.put("w/plan.json", '{"v": 2}')
    storage.pull(root / "plan.json")  # a single file
    assert (root / "plan.json").read_text() == '{"v": 2}'
    storage.pull(root / "nope")  # absent: nothing to do
    assert not (root / "nope").exists()


def test_exact_pull_replaces_a_stale_copy_of_the_same_size(s3):
    # The SQLite store changes in place and in whole pages: size says nothing about staleness.
    db = storage.mirror_of(s3.uri("w")) / "mlflow.db"
    db.parent.mkdir(parents=True)
    db.write_bytes(b"old!")
    s3.put("w/mlflow.db", b"new!")
    storage.pull(db)
    assert db.read_bytes() == b"old!"  # the cache rule: same size, kept
    storage.pull(db, exact=True)
    assert db.read_bytes() == b"new!"
    s3.fs.delete_file(s3.key("w/mlflow.db"))
    storage.pull(db, exact=True)  # the bucket has none: neither has the mirror
    assert not db.exists()


def test_open_input_reads_ranges(s3, tmp_path):
    blob = os.urandom(3 << 20)
    s3.put("w/model.safetensors", blob)
    (tmp_path / "model.safetensors").write_bytes(blob)
    for path in (storage.mirror_of(s3.uri("w/model.safetensors")),
                 tmp_path / "model.safetensors"):
        with storage.open_input(path) as f:
            assert f.seek(0, 2) == len(blob)
            for offset, n in ((0, 8), (1_000_003, 4096), (len(blob) - 100, 100)):
                buf = bytearray(n + 16)
                f.seek(offset)
                assert f.readinto(memoryview(buf)[8:8 + n]) == n
                assert bytes(buf[8:8 + n]) == blob[offset:offset + n]
                assert buf[:8] == bytes(8) and buf[8 + n:] == bytes(16 - 8)
            f.seek(100)
            assert f.read(5) == blob[100:105]


def test_delete(s3):
    for key in ("w/ingredients/t1/manifest.json", "w/ingredients/t1/model.safetensors",
                "w/ingredients/t2/manifest.json", "w/plan.json"):
        s3.put(key, "{}")
    root = storage.mirror_of(s3.uri("w"))
    storage.delete(root / "plan.json")
    assert not storage.is_file(root / "plan.json")
    storage.delete(root / "ingredients" / "t1")
    assert not storage.is_dir(root / "ingredients" / "t1")
    assert s3.files() == ["w/ingredients/t2/manifest.json"]
    storage.delete(root / "ingredients" / "t9")  # absent: nothing to do
    assert storage.list_files(root) == ["ingredients/t2/manifest.json"]


def test_publish_missing_uploads_the_world_marker_last(s3, upload_log):
    split = storage.mirror_of(s3.uri("w/data/world/train"))
    split.mkdir(parents=True)
    for name in ("part-00000.parquet", "part-00001.parquet", "_COMPLETE"):
        (split / name).write_text(name)
    assert storage.publish_missing(split.parent.parent) == 3
    keys = [key.rsplit("/", 1)[1] for key, _ in upload_log]
    assert keys == ["part-00000.parquet", "part-00001.parquet", "_COMPLETE"]
    # No shard went up while the split's marker was already there.
    assert all("_COMPLETE" not in present for _, present in upload_log)


def _interrupt_when(marker) -> threading.Thread:
    """Ctrl-C (SIGINT) to this process's main thread once `marker` exists (the failpoint
    creates it when hit): on a loaded machine a fixed delay may fire before the upload starts."""
    def fire():
        deadline = time.monotonic() + 120
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    thread = threading.Thread(target=fire, daemon=True)
    thread.start()
    return thread


def test_interrupted_upload_never_leaves_a_truncated_object(s3, tmp_path, monkeypatch):
    """Ctrl-C mid-upload (an exception unwinding the output stream, which pyarrow then
    commits): the final key keeps its old object whole and no temp object is left."""
    path = storage.mirror_of(s3.uri("w/results.parquet"))
    path.parent.mkdir(parents=True)
    path.write_bytes(b"old" * 1000)
    storage.publish(path)
    path.write_bytes(os.urandom(3 * 1024 * 1024))
    # The upload stops after its first 1 MiB chunk until the interrupt arrives.
    monkeypatch.setattr(storage, "UPLOAD_CHUNK", 1 << 20)
    # Python's own Ctrl-C handler: a Ray session started earlier in the test run installs
    # its own, and a bounded failpoint wait, so a missed interrupt fails instead of hanging.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    monkeypatch.setattr(faults, "WAIT_LIMIT_S", 30)
    monkeypatch.setenv(faults.ENV,
                       f"storage.upload=1:once={tmp_path / 'hit'}:wait={tmp_path / 'never'}")
    faults._hits.pop("storage.upload", None)
    thread = _interrupt_when(tmp_path / "hit")
    try:
        with pytest.raises(KeyboardInterrupt):
            storage.publish(path)
    finally:
        signal.signal(signal.SIGINT, previous)
    thread.join()
    assert s3.get("w/results.parquet") == b"old" * 1000
    assert s3.files("w") == ["w/results.parquet"]
    monkeypatch.delenv(faults.ENV)
    storage.publish(path)
    assert s3.get("w/results.parquet") == path.read_bytes()
    assert s3.files("w") == ["w/results.parquet"]


def test_temp_names_are_never_listed_uploaded_or_downloaded(s3):
    """What a killed writer leaves (a temp object between upload and move, a local temp dir)
    is invisible to listings, uploads and downloads."""
    s3.put("w/data/part-0.parquet", "p")
    s3.put("w/data/.tmp-part-1.parquet-0123abcd", "half")
    root = storage.mirror_of(s3.uri("w/data"))
    assert storage.list_files(root) == ["part-0.parquet"]
    storage.pull(root)
    assert sorted(p.name for p in root.iterdir()) == ["part-0.parquet"]
    (root / ".tmp-train-00ff").mkdir()
    (root / ".tmp-train-00ff" / "part-00000.parquet").write_text("partial")
    (root / "new.bin").write_text("n")
    assert storage.publish_missing(root) == 1
    assert s3.files("w/data") == ["w/data/.tmp-part-1.parquet-0123abcd", "w/data/new.bin",
                                  "w/data/part-0.parquet"]


@pytest.mark.parametrize("uri", ["s3://./x", "s3://../etc", "gs://..", "s3://."])
def test_dot_bucket_names_are_refused(uri):
    """'.' and '..' are no bucket: they would map to another bucket's mirror, or outside it."""
    with pytest.raises(StorageError, match=r"bucket name '\.\.?' is not a bucket"):
        storage.mirror_of(uri)


def test_tune_keeps_its_state_on_the_store_of_the_workdir_uri(s3, monkeypatch):
    # Ray Tune / Train open their storage from the environment unless handed a filesystem: a
    # workdir given with ?endpoint_override= hands them its own.
    from ray import tune

    plain = storage.mirror_of(s3.uri("w"))
    assert storage.tune_storage(plain / "tune") == (s3.uri("w/tune"), None)
    assert storage.tune_storage("/tmp/x/tune") == ("/tmp/x/tune", None)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    storage._filesystem.cache_clear()
    mirror = storage.mirror_of(f"{s3.uri('w')}?endpoint_override={s3.host_port}&scheme=http")
    path, fs = storage.tune_storage(mirror / "tune")
    assert path == s3.key("w/tune") and _endpoint(fs) == s3.host_port
    assert not tune.Tuner.can_restore(path, storage_filesystem=fs)
    s3.put("w/tune/sweep/tuner.pkl", b"x")  # what Tune looks for
    assert tune.Tuner.can_restore(f"{path}/sweep", storage_filesystem=fs)
