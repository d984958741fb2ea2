"""Downloads (served locally: tests never reach the internet), checksums, damaged files, CIFAR safety."""
import gzip
import hashlib
import io
import os
import pickle
import tarfile
from urllib.error import URLError

import numpy as np
import pytest

import cnnkit.data.cifar as cifar
import cnnkit.data.download as download
from cnnkit.data import load
from cnnkit.data.download import DatasetFormatError, DatasetNotFoundError, RemoteFile, ensure_file
from cnnkit.data.idx import read_idx_images, read_idx_labels


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _serve(monkeypatch, files: dict):
    """Make urlopen answer each URL's basename with the given bytes (and record the calls)."""
    calls = []

    def fake_urlopen(url, timeout=None):
        calls.append(url)
        data = files[url.rsplit("/", 1)[-1]]
        response = io.BytesIO(data)
        response.headers = {"Content-Length": str(len(data))}
        return response

    monkeypatch.setattr(download, "urlopen", fake_urlopen)
    return calls


def _no_network(monkeypatch):
    def refuse(url, timeout=None):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(download, "urlopen", refuse)


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# ----------------------------------------------------------------------------- download mechanics
def test_download_from_file_url_checks_md5_and_moves_into_place(tmp_path):
    payload = b"official bytes" * 1000
    source = tmp_path / "source.bin"
    source.write_bytes(payload)
    remote = RemoteFile("data.bin", source.as_uri(), _md5(payload))
    folder = tmp_path / "root" / "toy"
    path = ensure_file(remote, folder, progress=False)
    assert path == folder / "data.bin" and path.read_bytes() == payload
    assert _leftovers(folder) == ["data.bin"]  # no temporary file left behind
    source.unlink()
    assert ensure_file(remote, folder, progress=False) == path  # present: no second download


def test_bad_checksum_keeps_nothing(tmp_path, monkeypatch):
    _serve(monkeypatch, {"data.bin": b"tampered"})
    remote = RemoteFile("data.bin", "https://example.org/data.bin", _md5(b"official"))
    with pytest.raises(DatasetNotFoundError) as info:
        ensure_file(remote, tmp_path, progress=False)
    message = str(info.value)
    assert "data.bin" in message and str(tmp_path) in message and "https://example.org/data.bin" in message
    assert _md5(b"tampered") in message and "nothing was kept" in message
    assert _leftovers(tmp_path) == []


def test_network_failure_says_how_to_install_by_hand(tmp_path, monkeypatch):
    _no_network(monkeypatch)
    with pytest.raises(DatasetNotFoundError) as info:
        load("fashion-mnist", "test", root=tmp_path)
    message = str(info.value)
    assert "t10k-images-idx3-ubyte.gz" in message and str(tmp_path / "fashion-mnist") in message
    assert "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/t10k-images-idx3-ubyte.gz" in message
    assert "name resolution" in message and "by hand" in message
    assert "CNNKIT_DATA" in message and "root=" in message
    assert _leftovers(tmp_path / "fashion-mnist") == []


def test_transfer_cut_midway_leaves_no_partial_file(tmp_path, monkeypatch):
    class Dropping(io.BytesIO):
        headers = {"Content-Length": "3000000"}

        def read(self, n=-1):
            if self.tell() > 0:
                raise ConnectionResetError("connection reset by peer")
            return super().read(n)

    monkeypatch.setattr(download, "urlopen", lambda url, timeout=None: Dropping(b"x" * 3_000_000))
    remote = RemoteFile("big.bin", "https://example.org/big.bin", "0" * 32)
    with pytest.raises(DatasetNotFoundError, match="connection reset"):
        ensure_file(remote, tmp_path, progress=False)
    assert _leftovers(tmp_path) == []


def test_download_false_never_touches_the_network(tmp_path, monkeypatch):
    monkeypatch.setattr(download, "urlopen", lambda *a, **k: pytest.fail("network used with download=False"))
    with pytest.raises(DatasetNotFoundError, match="download=False"):
        load("mnist", "test", root=tmp_path, download=False)


def test_verify_detects_a_damaged_file_already_present(tmp_path):
    (tmp_path / "data.bin").write_bytes(b"damaged")
    remote = RemoteFile("data.bin", "https://example.org/data.bin", _md5(b"official"))
    assert ensure_file(remote, tmp_path, download=False) == tmp_path / "data.bin"  # not checked by default
    with pytest.raises(DatasetFormatError, match="Delete it"):
        ensure_file(remote, tmp_path, verify=True)


def test_mnist_download_end_to_end_with_the_official_checksums(shared_data, tmp_path, monkeypatch):
    served = {p.name: p.read_bytes() for p in (shared_data / "mnist").glob("t10k-*")}
    calls = _serve(monkeypatch, served)
    ds = load("mnist", "test", root=tmp_path)
    assert ds.images.shape == (10000, 1, 28, 28) and ds.labels[:3].tolist() == [7, 2, 1]
    assert sorted(c.rsplit("/", 1)[1] for c in calls) == sorted(served)
    assert all(c.startswith("https://ossci-datasets.s3.amazonaws.com/mnist/") for c in calls)
    assert _leftovers(tmp_path / "mnist") == sorted(served)
    load("mnist", "test", root=tmp_path, verify=True)  # the files now present pass the MD5 check
    assert len(calls) == 2


# ----------------------------------------------------------------------------- IDX format errors
def _idx(magic, dims, payload: bytes) -> bytes:
    return np.array([magic, *dims], dtype=">u4").tobytes() + payload


def _gz(path, data: bytes):
    path.write_bytes(gzip.compress(data))
    return path


def test_idx_reader_round_trip(tmp_path):
    pixels = np.arange(2 * 3 * 4, dtype=np.uint8)
    images = read_idx_images(_gz(tmp_path / "i.gz", _idx(2051, [2, 3, 4], pixels.tobytes())))
    np.testing.assert_array_equal(images, pixels.reshape(2, 1, 3, 4))
    labels = read_idx_labels(_gz(tmp_path / "l.gz", _idx(2049, [3], bytes([7, 0, 9]))))
    assert labels.tolist() == [7, 0, 9] and labels.dtype == np.int64


def test_idx_wrong_magic_number(tmp_path):
    path = _gz(tmp_path / "swapped.gz", _idx(2049, [3], bytes(3)))
    with pytest.raises(DatasetFormatError, match=r"swapped.gz.*magic number 2049 \(that of a labels file\), expected 2051"):
        read_idx_images(path)
    with pytest.raises(DatasetFormatError, match="magic number 1234"):
        read_idx_labels(_gz(tmp_path / "junk.gz", _idx(1234, [3], bytes(3))))


def test_idx_truncated_and_oversized_payloads(tmp_path):
    short = _gz(tmp_path / "short.gz", _idx(2051, [2, 3, 4], bytes(20)))
    with pytest.raises(DatasetFormatError, match="short.gz is truncated.*2 x 3 x 4 = 24 values.*holds 20"):
        read_idx_images(short)
    with pytest.raises(DatasetFormatError, match="trailing bytes"):
        read_idx_labels(_gz(tmp_path / "long.gz", _idx(2049, [2], bytes(5))))
    with pytest.raises(DatasetFormatError, match="too short for an IDX magic number"):
        read_idx_images(_gz(tmp_path / "tiny.gz", b"\x00\x00\x08"))
    with pytest.raises(DatasetFormatError, match="shorter than its 16-byte IDX header"):
        read_idx_images(_gz(tmp_path / "head.gz", _idx(2051, [1], b"")))


def test_truncated_gzip_stream_and_not_gzip(tmp_path):
    full = gzip.compress(_idx(2051, [50, 28, 28], np.random.default_rng(0).bytes(50 * 784)))
    cut = tmp_path / "cut.gz"
    cut.write_bytes(full[: len(full) // 2])
    with pytest.raises(DatasetFormatError, match="cut.gz is truncated"):
        read_idx_images(cut)
    plain = tmp_path / "plain.gz"
    plain.write_bytes(_idx(2051, [1, 1, 1], b"\x00"))
    with pytest.raises(DatasetFormatError, match="plain.gz is not a valid gzip"):
        read_idx_images(plain)


def test_images_and_labels_counts_must_agree(tmp_path):
    folder = tmp_path / "mnist"
    folder.mkdir()
    _gz(folder / "t10k-images-idx3-ubyte.gz", _idx(2051, [2, 2, 2], bytes(8)))
    _gz(folder / "t10k-labels-idx1-ubyte.gz", _idx(2049, [3], bytes(3)))
    with pytest.raises(DatasetFormatError, match="2 images but .* 3 labels"):
        load("mnist", "test", root=tmp_path, download=False)


# ----------------------------------------------------------------------------- CIFAR-10 files
def _batch(n, seed, protocol=2):
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = rng.integers(0, 10, n).tolist()
    return pickle.dumps({b"batch_label": b"toy", b"labels": labels, b"data": data}, protocol=protocol), data, labels


def _meta(protocol=2):
    names = [c.encode() for c in cifar.CLASSES]
    return pickle.dumps({b"label_names": names, b"num_vis": 3072}, protocol=protocol)


def _cifar_tarball(path, extra=()):
    members = {f"cifar-10-batches-py/{n}": _batch(2 + i, i)[0] for i, n in enumerate(cifar.TRAIN_BATCHES + cifar.TEST_BATCHES)}
    members["cifar-10-batches-py/batches.meta"] = _meta()
    with tarfile.open(path, "w:gz") as tar:
        for name, data in list(members.items()) + list(extra):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_restricted_unpickler_reads_numpy_batches(tmp_path, protocol):
    raw, data, labels = _batch(3, 0, protocol)
    (tmp_path / "b").write_bytes(raw)
    images, read_labels = cifar.read_batch(tmp_path / "b")
    np.testing.assert_array_equal(images, data.reshape(3, 3, 32, 32))
    assert read_labels.tolist() == labels


def test_restricted_unpickler_refuses_other_globals(tmp_path):
    marker = tmp_path / "should-not-exist"

    class Evil:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    (tmp_path / "evil").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}, protocol=2))
    with pytest.raises(DatasetFormatError, match=r"refused to load the global (posix|nt)\.mkdir"):
        cifar.read_batch(tmp_path / "evil")
    assert not marker.exists()
    objects = np.array([1, "two"], dtype=object)
    (tmp_path / "objects").write_bytes(pickle.dumps({b"data": objects, b"labels": []}, protocol=2))
    with pytest.raises(DatasetFormatError, match="object dtype"):
        cifar.read_batch(tmp_path / "objects")


def test_bad_batch_contents(tmp_path):
    (tmp_path / "wrong").write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(DatasetFormatError, match=r"uint8 array \(n, 3072\)"):
        cifar.read_batch(tmp_path / "wrong")
    (tmp_path / "count").write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}))
    with pytest.raises(DatasetFormatError, match="2 integers"):
        cifar.read_batch(tmp_path / "count")
    raw = _batch(3, 0)[0]
    (tmp_path / "cut").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DatasetFormatError, match="cut"):
        cifar.read_batch(tmp_path / "cut")


def test_cifar_tarball_downloaded_extracted_and_loaded(tmp_path, monkeypatch):
    tarball = _cifar_tarball(tmp_path / "cifar-10-python.tar.gz")
    monkeypatch.setattr(cifar, "TARBALL", RemoteFile(tarball.name, tarball.as_uri(), _md5(tarball.read_bytes())))
    root = tmp_path / "root"
    train = load("cifar10", "train", root=root)
    assert len(train) == 2 + 3 + 4 + 5 + 6 and train.images.shape[1:] == (3, 32, 32)
    assert train.classes == cifar.CLASSES
    assert train.source == root / "cifar10" / "cifar-10-batches-py"
    assert _leftovers(root / "cifar10") == ["cifar-10-batches-py", "cifar-10-python.tar.gz"]
    assert len(load("cifar10", "test", root=root, download=False)) == 7


def test_cifar_full_folder_preferred_over_subset(tmp_path):
    for folder, n in [("cifar10", 5), ("cifar10-subset", 2)]:
        batches = tmp_path / folder / "cifar-10-batches-py"
        batches.mkdir(parents=True)
        for name in cifar.TRAIN_BATCHES + cifar.TEST_BATCHES:
            (batches / name).write_bytes(_batch(n, 0)[0])
        (batches / "batches.meta").write_bytes(_meta())
    assert len(load("cifar10", "test", root=tmp_path, download=False)) == 5
    (tmp_path / "cifar10" / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DatasetFormatError, match="incomplete: data_batch_3 missing"):
        load("cifar10", "train", root=tmp_path, download=False)


@pytest.mark.parametrize("name", ["../escape", "/abs/path", "cifar-10-batches-py/../../escape", "elsewhere/file"])
def test_cifar_tarball_with_unsafe_paths_is_refused(tmp_path, name):
    tarball = _cifar_tarball(tmp_path / "bad.tar.gz", extra=[(name, b"payload")])
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(DatasetFormatError, match="refusing|outside|unsafe"):
        cifar.extract_tarball(tarball, dest)
    assert _leftovers(dest) == [] and not (tmp_path / "escape").exists()


def test_cifar_tarball_with_a_link_is_refused(tmp_path):
    tarball = tmp_path / "link.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        info = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(DatasetFormatError, match="not a regular file"):
        cifar.extract_tarball(tarball, tmp_path)
    assert not (tmp_path / "cifar-10-batches-py").exists()


def test_cifar_truncated_tarball(tmp_path):
    whole = _cifar_tarball(tmp_path / "whole.tar.gz").read_bytes()
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(whole[: len(whole) // 2])
    (tmp_path / "out").mkdir()
    with pytest.raises(DatasetFormatError, match="cut.tar.gz is damaged"):
        cifar.extract_tarball(cut, tmp_path / "out")
    assert _leftovers(tmp_path / "out") == []
