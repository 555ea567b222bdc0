"""Download path against a local HTTP server on 127.0.0.1 (no internet needed)."""
import hashlib
import http.server
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest

from minigrad.data import CIFAR10, MNIST, DatasetNotFoundError, DownloadError, download_file
from minigrad.data import datasets as dsmod

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep test output quiet
        pass

    def do_GET(self):
        srv = self.server
        srv.requests.append((self.path, self.headers.get("Range")))
        body = srv.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        rng = self.headers.get("Range")
        if rng and self.path not in srv.no_range:
            start = int(rng.split("=")[1].split("-")[0])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            self.send_header("Content-Length", str(len(body) - start))
            self.end_headers()
            self.wfile.write(body[start:])
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if srv.drop.get(self.path, 0) > 0:  # send half, then drop the connection
            srv.drop[self.path] -= 1
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.files, srv.drop, srv.requests, srv.no_range = {}, {}, [], set()
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    t.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    yield srv
    srv.shutdown()
    srv.server_close()


def _md5(b):
    return hashlib.md5(b).hexdigest()


def _check(b):
    return lambda p: _md5(Path(p).read_bytes()) == _md5(b)


PAYLOAD = np.random.default_rng(0).integers(0, 256, 200_000, dtype=np.uint8).tobytes()


def test_plain_download_is_atomic_and_verified(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    dest = download_file([server.url + "/f.bin"], tmp_path / "d" / "f.bin", _check(PAYLOAD),
                         progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert not (tmp_path / "d" / "f.bin.part").exists()


def test_corrupt_mirror_falls_back(server, tmp_path):
    server.files["/bad/f.bin"] = PAYLOAD[:-1] + b"x"
    server.files["/good/f.bin"] = PAYLOAD
    dest = download_file([server.url + "/missing/f.bin", server.url + "/bad/f.bin",
                          server.url + "/good/f.bin"], tmp_path / "f.bin", _check(PAYLOAD),
                         progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert [p for p, _ in server.requests] == ["/missing/f.bin", "/bad/f.bin", "/good/f.bin"]


def test_corrupt_only_mirror_fails_cleanly(server, tmp_path):
    server.files["/bad/f.bin"] = PAYLOAD[:-1] + b"x"
    with pytest.raises(DownloadError, match=r"/bad/f.bin: checksum mismatch"):
        download_file([server.url + "/bad/f.bin"], tmp_path / "f.bin", _check(PAYLOAD),
                      progress=False)
    assert not (tmp_path / "f.bin").exists() and not (tmp_path / "f.bin.part").exists()


def test_dropped_connection_then_resume(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    server.drop["/f.bin"] = 1
    dest = tmp_path / "f.bin"
    with pytest.raises(DownloadError, match="partial file kept"):
        download_file([server.url + "/f.bin"], dest, _check(PAYLOAD), progress=False, max_resumes=0)
    part = tmp_path / "f.bin.part"
    assert part.stat().st_size == len(PAYLOAD) // 2 and not dest.exists()
    download_file([server.url + "/f.bin"], dest, _check(PAYLOAD), progress=False)
    assert dest.read_bytes() == PAYLOAD and not part.exists()
    assert server.requests[-1] == ("/f.bin", f"bytes={len(PAYLOAD) // 2}-")


def test_dropped_connection_resumes_within_one_call(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    server.drop["/f.bin"] = 1
    dest = download_file([server.url + "/f.bin"], tmp_path / "f.bin", _check(PAYLOAD), progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert [r for _, r in server.requests] == [None, f"bytes={len(PAYLOAD) // 2}-"]


def test_server_ignoring_range_restarts(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    server.no_range.add("/f.bin")
    (tmp_path / "f.bin.part").write_bytes(b"garbage-prefix")
    dest = download_file([server.url + "/f.bin"], tmp_path / "f.bin", _check(PAYLOAD), progress=False)
    assert dest.read_bytes() == PAYLOAD


def test_complete_part_file_416(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    (tmp_path / "f.bin.part").write_bytes(PAYLOAD)
    dest = download_file([server.url + "/f.bin"], tmp_path / "f.bin", _check(PAYLOAD), progress=False)
    assert dest.read_bytes() == PAYLOAD


def test_unreachable_mirror_error_lists_urls(tmp_path):
    with pytest.raises(DownloadError, match=r"could not download f.bin:\n  http://127.0.0.1:9/f.bin: URLError"):
        download_file(["http://127.0.0.1:9/f.bin"], tmp_path / "f.bin", progress=False, timeout=2)


@pytest.mark.skipif(not (SHARED_MNIST / "t10k-images-idx3-ubyte.gz").exists(), reason="no shared MNIST")
def test_mnist_download_from_local_mirror(server, tmp_path, monkeypatch):
    # The shared .gz files differ from the published ones in gzip wrapping only: the
    # decompressed-content MD5 must be accepted. Also drop the first transfer halfway.
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        server.files["/mirror2/" + name] = (SHARED_MNIST / name).read_bytes()
    server.files["/mirror1/t10k-images-idx3-ubyte.gz"] = b"not a gzip file at all"
    server.drop["/mirror2/t10k-images-idx3-ubyte.gz"] = 1
    monkeypatch.setenv("MINIGRAD_MNIST_MIRRORS", f"{server.url}/mirror1/ {server.url}/mirror2")
    ds = MNIST(tmp_path, train=False, download=True, progress=False)
    assert len(ds) == 10000 and not ds.is_subset
    assert (tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz").is_file()
    assert not list((tmp_path / "mnist").glob("*.part"))
    n_req = len(server.requests)
    MNIST(tmp_path, train=False, download=True)  # already there: no more requests
    assert len(server.requests) == n_req


def test_mnist_offline_error_says_where(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIGRAD_MNIST_MIRRORS", "http://127.0.0.1:9/")
    with pytest.raises(DatasetNotFoundError) as ei:
        MNIST(tmp_path, train=True, download=True, progress=False)
    msg = str(ei.value)
    assert f"into {tmp_path / 'mnist'}/" in msg
    assert "train-images-idx3-ubyte.gz" in msg and "train-labels-idx1-ubyte.gz" in msg
    assert "127.0.0.1:9" in msg
    ds = MNIST(tmp_path, train=True, download=True, subset_fallback=True, progress=False)
    assert ds.is_subset and "using the shipped 10,000-image subset" in ds.fallback_message


def test_cifar_download_from_local_mirror(server, tmp_path, monkeypatch):
    src = tmp_path / "src" / "cifar-10-batches-bin"
    src.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rec = rng.integers(0, 256, size=(4, 3073), dtype=np.uint8)
    rec[:, 0] %= 10
    (src / "test_batch.bin").write_bytes(rec.tobytes())
    tgz = tmp_path / "src" / "cifar-10-binary.tar.gz"
    with tarfile.open(tgz, "w:gz") as tf:
        tf.add(src, arcname="cifar-10-batches-bin")
    body = tgz.read_bytes()
    server.files["/kriz/cifar-10-binary.tar.gz"] = body
    server.files["/bad/cifar-10-binary.tar.gz"] = body[::-1]
    monkeypatch.setattr(dsmod, "CIFAR10_ARCHIVE_MD5", _md5(body))
    monkeypatch.setattr(dsmod, "CIFAR10_MIRRORS", [f"{server.url}/bad/", f"{server.url}/kriz/"])
    monkeypatch.delenv("MINIGRAD_CIFAR10_MIRRORS", raising=False)
    root = tmp_path / "data"
    ds = CIFAR10(root, train=False, download=True, progress=False)
    np.testing.assert_array_equal(ds.targets, rec[:, 0])
    assert (root / "cifar10" / "cifar-10-binary.tar.gz").read_bytes() == body


def test_stale_part_file_is_redone_from_scratch(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    (tmp_path / "f.bin.part").write_bytes(b"stale bytes from another file")
    dest = download_file([server.url + "/f.bin"], tmp_path / "f.bin", _check(PAYLOAD), progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert [r for _, r in server.requests] == ["bytes=29-", None]
