"""MNIST and Fashion-MNIST: the official gzipped IDX files.

IDX layout (http://yann.lecun.com/exdb/mnist/): a big-endian header, then raw ``uint8`` values.

* images (magic 2051): ``magic, count, rows, cols`` as four big-endian uint32, then
  ``count * rows * cols`` pixels, row-major;
* labels (magic 2049): ``magic, count`` as two big-endian uint32, then ``count`` labels.

The files are read as a stream: the header first, its announced size checked against what the
gzip file can hold, then the values straight into their array (a small gzip file announcing
a gigabyte is refused, not inflated).
"""
from __future__ import annotations

import gzip
import math
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .download import DatasetFormatError, RemoteFile, data_root, ensure_file

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049

MNIST_CLASSES = [str(d) for d in range(10)]
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]

# The S3 mirror torchvision uses: yann.lecun.com often refuses automated downloads.
_MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
_FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"

# (split, kind) -> (file name, official MD5)
_MNIST_FILES = {
    ("train", "images"): ("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
    ("train", "labels"): ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
    ("test", "images"): ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
    ("test", "labels"): ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
}
_FASHION_FILES = {
    ("train", "images"): ("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
    ("train", "labels"): ("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
    ("test", "images"): ("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
    ("test", "labels"): ("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"),
}

# name -> (folder under the data root, base URL, files, class names)
IDX_DATASETS = {
    "mnist": ("mnist", _MNIST_URL, _MNIST_FILES, MNIST_CLASSES),
    "fashion-mnist": ("fashion-mnist", _FASHION_URL, _FASHION_FILES, FASHION_MNIST_CLASSES),
}


def remote_files(name: str, split: str) -> tuple[RemoteFile, RemoteFile]:
    """The official (images, labels) files of one split of ``mnist`` or ``fashion-mnist``."""
    _, base_url, files, _ = IDX_DATASETS[name]
    return tuple(RemoteFile(files[split, kind][0], base_url + files[split, kind][0], files[split, kind][1])
                 for kind in ("images", "labels"))


@contextmanager
def _gzip_errors(path: Path):
    """Turn a damaged gzip stream into a ``DatasetFormatError`` naming ``path``."""
    try:
        yield
    except EOFError as e:
        raise DatasetFormatError(
            f"{path} is truncated (the gzip stream ends early: {e}). Delete it and load again to "
            "download a fresh copy."
        ) from e
    except (gzip.BadGzipFile, zlib.error, OSError) as e:
        raise DatasetFormatError(f"{path} is not a valid gzip file ({e}). Delete it and load again.") from e


def _header(head: bytes, path: Path, magic: int, words: int) -> list[int]:
    """The big-endian uint32 header after the magic number, checked first (a swapped file says so)."""
    if len(head) < 4:
        raise DatasetFormatError(f"{path} is truncated: {len(head)} bytes, too short for an IDX magic number")
    _check_magic(int(np.frombuffer(head, dtype=">u4", count=1)[0]), magic, path)
    if len(head) < 4 * words:
        raise DatasetFormatError(f"{path} is truncated: {len(head)} bytes, shorter than its {4 * words}-byte IDX header")
    return [int(v) for v in np.frombuffer(head, dtype=">u4", count=words)[1:]]


def _check_magic(magic: int, expected: int, path: Path) -> None:
    if magic != expected:
        kind = {IMAGES_MAGIC: "an images", LABELS_MAGIC: "a labels"}[expected]
        found = {IMAGES_MAGIC: " (that of an images file)", LABELS_MAGIC: " (that of a labels file)"}.get(magic, "")
        raise DatasetFormatError(
            f"{path} does not start like {kind} IDX file: magic number {magic}{found}, expected {expected}"
        )


# Deflate turns one compressed byte into at most 1032 (zlib's technical notes): a header announcing
# more values than the gzip file could hold is refused before anything is allocated.
DEFLATE_MAX_RATIO = 1032
READ_CHUNK = 1 << 20


def _read_idx(path, magic: int, words: int, describe) -> tuple[list[int], np.ndarray]:
    """The header counts and the ``uint8`` payload of a gzipped IDX file, streamed by chunks.

    ``describe(counts)`` names the announced size for messages, e.g. ``"2 x 3 x 4"``. The payload
    size the header announces is checked against what the compressed file can hold before its
    array is allocated, and the file must hold exactly that many values.
    """
    path = Path(path)
    with _gzip_errors(path), gzip.open(path, "rb") as f:
        counts = _header(f.read(4 * words), path, magic, words)
        expected = math.prod(counts)
        counts_text = f"{describe(counts)} = {expected} values"
        if expected > DEFLATE_MAX_RATIO * path.stat().st_size:
            raise DatasetFormatError(
                f"{path}: its header announces {counts_text}, more than a {path.stat().st_size}-byte gzip "
                "file can hold"
            )
        # A fresh, writable array the dataset owns, filled chunk by chunk (no whole-file bytes).
        pixels = np.empty(expected, dtype=np.uint8)
        view, filled = memoryview(pixels), 0
        while filled < expected:
            got = f.readinto(view[filled:filled + READ_CHUNK])
            if not got:
                break
            filled += got
        if filled < expected:
            raise DatasetFormatError(
                f"{path} is truncated: its header announces {counts_text}, but the file holds {filled}"
            )
        if f.read(1):
            raise DatasetFormatError(
                f"{path} has trailing bytes: its header announces {counts_text}, but the file holds more"
            )
    return counts, pixels


def read_idx_images(path) -> np.ndarray:
    """Read a gzipped IDX images file (magic 2051) into a ``uint8`` array ``(N, 1, rows, cols)``."""
    (count, rows, cols), pixels = _read_idx(path, IMAGES_MAGIC, 4, lambda c: " x ".join(map(str, c)))
    return pixels.reshape(count, 1, rows, cols)


def read_idx_labels(path) -> np.ndarray:
    """Read a gzipped IDX labels file (magic 2049) into an ``int64`` array ``(N,)``."""
    _, labels = _read_idx(path, LABELS_MAGIC, 2, lambda c: f"{c[0]} labels")
    return labels.astype(np.int64)


def load_idx_dataset(name: str, split: str, root=None, download: bool = True, verify: bool = False):
    """Load one split of ``mnist`` or ``fashion-mnist`` from ``<root>/<name>/``."""
    from .dataset import Dataset

    folder_name, _, _, classes = IDX_DATASETS[name]
    folder = data_root(root) / folder_name
    images_file, labels_file = (ensure_file(remote, folder, download=download, verify=verify)
                                for remote in remote_files(name, split))
    images = read_idx_images(images_file)
    labels = read_idx_labels(labels_file)
    if len(images) != len(labels):
        raise DatasetFormatError(
            f"{images_file} holds {len(images)} images but {labels_file} holds {len(labels)} labels"
        )
    if len(labels) and labels.max() >= len(classes):
        raise DatasetFormatError(f"{labels_file} holds label {labels.max()}, but {name} has {len(classes)} classes")
    return Dataset(images, labels, classes, name=name, split=split, source=folder)
