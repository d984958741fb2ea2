"""CIFAR-10: the official python-pickle batches, read with a restricted unpickler.

Layout (https://www.cs.toronto.edu/~kriz/cifar.html): ``cifar-10-batches-py/`` holds
``data_batch_1`` .. ``data_batch_5`` (training), ``test_batch`` and ``batches.meta``. Each batch
is a pickled dict with ``b"data"``, a ``uint8`` array ``(n, 3072)`` (1024 red, 1024 green, then
1024 blue values per image, each plane row-major 32 x 32), and ``b"labels"``, a list of ``n``
ints; ``batches.meta`` holds ``b"label_names"``. ``n`` is 10,000 in the official files; the
loader accepts any count (the verified subset in ``shared/data`` has 4,000 or 1,017 per batch).

Where the batches are looked for, in order (``<root>`` as in ``download.data_root``):

1. ``<root>/cifar10/cifar-10-batches-py/``   (the full set, extracted)
2. ``<root>/cifar10-subset/cifar-10-batches-py/``   (a partial copy in the official layout)
3. ``<root>/cifar10/cifar-10-python.tar.gz``, the official tarball, extracted into 1. first;
   downloaded from the official site when missing (unless ``download=False``).

The folder used is recorded in ``dataset.source`` and logged (logger ``cnnkit.data``).

Pickles can run arbitrary code when loaded, so the batches go through an unpickler that resolves
only the few globals NumPy needs to rebuild a plain array (``_reconstruct``, ``ndarray``,
``dtype``, and ``_codecs.encode`` that Python 3's protocol 2 uses for bytes), and refuses
object dtypes; anything else is a ``DatasetFormatError``.
"""
from __future__ import annotations

import codecs
import gzip
import logging
import os
import pickle
import shutil
import tarfile
import tempfile
import zlib
from pathlib import Path, PurePosixPath

import numpy as np

from .download import ENV_VAR, DatasetFormatError, DatasetNotFoundError, RemoteFile, data_root, ensure_file

logger = logging.getLogger("cnnkit.data")

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
BATCHES_DIR = "cifar-10-batches-py"
TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_BATCHES = ["test_batch"]
META_FILE = "batches.meta"
# The folders under the data root searched for BATCHES_DIR, in order.
FOLDERS = ("cifar10", "cifar10-subset")
TARBALL = RemoteFile(
    "cifar-10-python.tar.gz", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    "c58f30108f718f92721af3b95e74349a",
)
# Files taken from the tarball: the batches, the meta file and the readme; nothing else is written.
_TARBALL_MEMBERS = set(TRAIN_BATCHES + TEST_BATCHES + [META_FILE, "readme.html"])
IMAGE_SHAPE = (3, 32, 32)


# ---------------------------------------------------------------------------------- the unpickler
def _plain_dtype(*args):
    dtype = np.dtype(*args)
    if dtype.hasobject:
        raise pickle.UnpicklingError(f"object dtype {dtype} refused: CIFAR-10 data are uint8")
    return dtype


def _latin1_encode(text, encoding="utf-8"):
    # Python 3 writes bytes under pickle protocol 2 as _codecs.encode(text, "latin1").
    if codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} refused (only latin1)")
    return text.encode("latin1")


# The functions NumPy's own pickles name, taken from NumPy itself so that no deprecated module
# (numpy.core in NumPy 2) is imported.
_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(1))[0]
_FROMBUFFER = np.zeros(1).__reduce_ex__(5)[0]
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy.core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy._core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _plain_dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that can rebuild dicts, lists, bytes, ints and plain NumPy arrays, nothing else."""

    def find_class(self, module, name):
        try:
            return _ALLOWED_GLOBALS[module, name]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refused to load the global {module}.{name}: a CIFAR-10 batch holds only dicts, lists, "
                "bytes, ints and NumPy arrays"
            ) from None


def restricted_load(path):
    """Unpickle ``path`` (``encoding="bytes"``, as the official files need) with the restricted unpickler."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return _RestrictedUnpickler(f, encoding="bytes").load()
    except FileNotFoundError:
        raise
    except EOFError as e:
        raise DatasetFormatError(f"{path} is truncated (the pickle ends early)") from e
    except (pickle.UnpicklingError, ValueError, TypeError, AttributeError, IndexError, KeyError) as e:
        raise DatasetFormatError(f"{path} is not a valid CIFAR-10 pickle: {e}") from e


# ---------------------------------------------------------------------------------- reading batches
def _text_keys(obj, path):
    if not isinstance(obj, dict):
        raise DatasetFormatError(f"{path} should hold a dict, found {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def read_batch(path) -> tuple[np.ndarray, np.ndarray]:
    """One batch file -> ``(images uint8 (n, 3, 32, 32), labels int64 (n,))``."""
    path = Path(path)
    batch = _text_keys(restricted_load(path), path)
    missing = {"data", "labels"} - batch.keys()
    if missing:
        raise DatasetFormatError(f"{path} lacks the key(s) {sorted(missing)}; found {sorted(batch)}")
    data, labels = batch["data"], batch["labels"]
    size = int(np.prod(IMAGE_SHAPE))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != size:
        what = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DatasetFormatError(f"{path}: 'data' should be a uint8 array (n, {size}), found a {what}")
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer) or len(labels) != len(data):
        raise DatasetFormatError(
            f"{path}: 'labels' should be {len(data)} integers (one per image), found {labels.dtype} {labels.shape}"
        )
    return data.reshape(-1, *IMAGE_SHAPE), labels.astype(np.int64)


def read_class_names(path) -> list[str]:
    path = Path(path)
    meta = _text_keys(restricted_load(path), path)
    names = meta.get("label_names")
    if not isinstance(names, list) or not all(isinstance(n, (bytes, str)) for n in names):
        raise DatasetFormatError(f"{path} should hold 'label_names', a list of names")
    return [n.decode("utf-8") if isinstance(n, bytes) else n for n in names]


def read_batches_folder(folder, split: str):
    """Read ``split`` from an extracted ``cifar-10-batches-py`` folder into a ``Dataset``."""
    from .dataset import Dataset

    folder = Path(folder)
    names = TRAIN_BATCHES if split == "train" else TEST_BATCHES
    files = [folder / n for n in names + [META_FILE]]
    absent = [f.name for f in files if not f.is_file()]
    if absent:
        raise DatasetFormatError(
            f"{folder} is incomplete: {', '.join(absent)} missing. Delete the folder to extract or download it again."
        )
    parts = [read_batch(folder / n) for n in names]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    classes = read_class_names(folder / META_FILE)
    if len(labels) and labels.max() >= len(classes):
        raise DatasetFormatError(f"{folder}: label {labels.max()} found, but {META_FILE} names {len(classes)} classes")
    return Dataset(images, labels, classes, name="cifar10", split=split, source=folder)


# ---------------------------------------------------------------------------------- the tarball
def extract_tarball(tarball, folder) -> Path:
    """Extract the batches of the official tarball into ``folder/cifar-10-batches-py`` safely.

    Only regular files directly inside ``cifar-10-batches-py/`` with the official names are
    written, by name (never a path taken from the archive), into a temporary folder that is
    renamed into place once complete. Links, devices, absolute paths and ``..`` are refused.
    """
    tarball, folder = Path(tarball), Path(folder)
    destination = folder / BATCHES_DIR
    try:
        staging = Path(tempfile.mkdtemp(dir=folder, prefix=f".{BATCHES_DIR}.", suffix=".part"))
    except OSError as e:
        raise DatasetNotFoundError(
            f"cannot extract {tarball}: {folder} cannot be written to ({e}). Extract it there by hand "
            f"(tar xzf {tarball.name}) or copy it to a writable folder and pass that as root= (or {ENV_VAR})."
        ) from e
    try:
        with tarfile.open(tarball, "r:gz") as tar:
            for member in tar:
                target = _member_target(member, tarball)
                if target is None:
                    continue
                with tar.extractfile(member) as src, open(staging / target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        absent = sorted(_TARBALL_MEMBERS - {"readme.html"} - {p.name for p in staging.iterdir()})
        if absent:
            raise DatasetFormatError(f"{tarball} lacks {BATCHES_DIR}/{', '.join(absent)}")
        staging.chmod(0o755)  # mkdtemp makes it private (0700); the batches are ordinary data
        os.rename(staging, destination)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise DatasetFormatError(f"{tarball} is damaged ({e}); delete it to download it again") from e
    except OSError as e:
        raise DatasetNotFoundError(f"could not extract {tarball} into {destination} ({e})") from e
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return destination


def _member_target(member: tarfile.TarInfo, tarball: Path) -> str | None:
    """The file name to write for a tar member, None to skip it; raise for anything unsafe."""
    path = PurePosixPath(member.name)
    if path.is_absolute() or ".." in path.parts:
        raise DatasetFormatError(f"{tarball} holds an unsafe path {member.name!r}; refusing to extract it")
    if member.isdir():
        return None
    if not member.isfile():
        raise DatasetFormatError(f"{tarball} holds {member.name!r}, which is not a regular file; refusing to extract it")
    if len(path.parts) != 2 or path.parts[0] != BATCHES_DIR:
        raise DatasetFormatError(f"{tarball} holds {member.name!r}, outside {BATCHES_DIR}/; not the official tarball")
    return path.name if path.name in _TARBALL_MEMBERS else None


# ---------------------------------------------------------------------------------- the loader
def find_batches_folder(root=None, download: bool = True, verify: bool = False) -> Path:
    """The ``cifar-10-batches-py`` folder to read, extracting (and downloading) the tarball if needed."""
    root = data_root(root)
    candidates = [root / f / BATCHES_DIR for f in FOLDERS]
    for folder in candidates:
        if folder.is_dir():
            return folder
    try:
        tarball = ensure_file(TARBALL, root / FOLDERS[0], download=download, verify=verify)
    except DatasetNotFoundError as e:
        looked = " or ".join(str(c) for c in candidates)
        raise DatasetNotFoundError(f"CIFAR-10 batches not found in {looked}, nor its tarball: {e}") from e
    logger.info("cnnkit.data: extracting %s", tarball)
    return extract_tarball(tarball, tarball.parent)


def load_cifar10(split: str, root=None, download: bool = True, verify: bool = False):
    folder = find_batches_folder(root, download=download, verify=verify)
    logger.info("cnnkit.data: cifar10 %s split read from %s", split, folder)
    return read_batches_folder(folder, split)
