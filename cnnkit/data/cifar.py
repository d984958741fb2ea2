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
``dtype``, and ``_codecs.encode`` that Python 3's protocol 2 uses for bytes), each as a stand-in
made for that load that checks an array's declared size against the bytes holding it before
building it; object dtypes and anything else are a ``DatasetFormatError``. A batch's images must
fit in the file that holds them.
"""
from __future__ import annotations

import codecs
import gzip
import logging
import math
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
# The official members are at most 31 MB (a batch of 10,000 images): a member declaring more
# than this is not the official tarball and is refused before anything is written.
MAX_MEMBER_BYTES = 256 << 20
IMAGE_SHAPE = (3, 32, 32)


# ---------------------------------------------------------------------------------- the unpickler
# NumPy pickles an array as ``_reconstruct(ndarray, (0,), b"b")`` followed by BUILD with the state
# ``(version, shape, dtype, fortran, raw bytes)`` (protocol 5: ``_frombuffer(bytes, dtype, shape,
# order)``), and a dtype as ``dtype(code, align, copy)`` followed by BUILD with its byte order.
# The unpickler below hands out stand-ins for these globals, made afresh for every load: they
# collect the state, check it (plain numbers, declared size == bytes in the file) and only then
# build the array. No NumPy object ever receives state from the file, ``ndarray`` cannot be
# called (its ``strides`` argument would make a 212-byte file look like 300,000 images), and
# nothing is allocated before its size has been checked against the bytes that hold it.
_NUMERIC_DTYPES = {"b1", "u1", "i1", "u2", "i2", "u4", "i4", "u8", "i8", "f2", "f4", "f8"}


class _DtypeStandIn:
    """``numpy.dtype(code, ...)`` while unpickling: a plain numeric dtype and its byte order."""

    def __init__(self, code, align=False, copy=False):
        if isinstance(code, bytes):
            code = code.decode("latin1")
        if not isinstance(code, str) or code not in _NUMERIC_DTYPES:
            dtype = np.dtype(code) if isinstance(code, str) and code[:1] in "OV" else None
            if dtype is not None and dtype.hasobject:
                raise pickle.UnpicklingError(f"object dtype {dtype} refused: CIFAR-10 data are uint8")
            raise pickle.UnpicklingError(f"dtype {code!r} refused: CIFAR-10 data are plain numbers")
        self.dtype = np.dtype(code)

    def __setstate__(self, state):
        order = state[1] if isinstance(state, tuple) and len(state) >= 5 else None
        order = order.decode("latin1") if isinstance(order, bytes) else order  # Python 2 files: bytes
        if order not in ("|", "<", ">", "=") or not all(v is None for v in state[2:5]):
            raise pickle.UnpicklingError("corrupt dtype state (only plain numeric dtypes are read)")
        if order in "<>":
            self.dtype = self.dtype.newbyteorder(order)


class _ArrayStandIn:
    """``_reconstruct(ndarray, (0,), b"b")`` while unpickling; BUILD's state makes ``array``."""

    array = None

    def __setstate__(self, state):
        if not (isinstance(state, tuple) and len(state) == 5 and isinstance(state[4], (bytes, bytearray))):
            raise pickle.UnpicklingError("corrupt array state (expected raw bytes of plain numbers)")
        _, shape, dtype, fortran, raw = state
        self.array = _array_from_bytes(raw, dtype, shape, "F" if fortran else "C")


def _array_from_bytes(raw, dtype, shape, order) -> np.ndarray:
    """The array ``shape`` of ``dtype`` held in ``raw``, after checking they agree (no allocation before)."""
    if not isinstance(dtype, _DtypeStandIn):
        raise pickle.UnpicklingError(f"an array's dtype must be a numpy dtype, got {type(dtype).__name__}")
    if not (isinstance(shape, tuple) and len(shape) <= 32
            and all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n < 2**62 for n in shape)):
        raise pickle.UnpicklingError("corrupt array shape (expected a tuple of non-negative ints)")
    declared = math.prod(shape) * dtype.dtype.itemsize
    if declared != len(raw):
        raise pickle.UnpicklingError(f"an array declares shape {shape} of {dtype.dtype} ({declared} bytes) "
                                     f"but holds {len(raw)} bytes")
    if order not in ("C", "F"):
        raise pickle.UnpicklingError(f"corrupt array order {order!r}")
    return np.frombuffer(raw, dtype=dtype.dtype).reshape(shape, order=order).copy()


def _allowed_globals() -> dict:
    """The globals a CIFAR-10 pickle may name, as fresh stand-ins for one load."""
    ndarray_type = object()  # only ever the first argument of _reconstruct

    def reconstruct(subtype, shape, code):
        if subtype is not ndarray_type or shape != (0,):
            raise pickle.UnpicklingError("_reconstruct is read only as NumPy writes it: (ndarray, (0,), b'b')")
        return _ArrayStandIn()

    def frombuffer(buffer, dtype, shape, order):
        if not isinstance(buffer, (bytes, bytearray)):
            raise pickle.UnpicklingError(f"_frombuffer needs bytes, got {type(buffer).__name__}")
        return _array_from_bytes(buffer, dtype, shape, order)

    def latin1_encode(text, encoding="utf-8"):
        # Python 3 writes bytes under pickle protocol 2 as _codecs.encode(text, "latin1").
        if not isinstance(text, str) or codecs.lookup(encoding).name != "iso8859-1":
            raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} refused (only latin1)")
        return text.encode("latin1")

    return {
        ("numpy.core.multiarray", "_reconstruct"): reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): reconstruct,
        ("numpy.core.numeric", "_frombuffer"): frombuffer,
        ("numpy._core.numeric", "_frombuffer"): frombuffer,
        ("numpy", "ndarray"): ndarray_type,
        ("numpy", "dtype"): _DtypeStandIn,
        ("_codecs", "encode"): latin1_encode,
    }


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that can rebuild dicts, lists, bytes, ints and plain NumPy arrays, nothing else."""

    def __init__(self, file, **kwargs):
        super().__init__(file, **kwargs)
        self._globals = _allowed_globals()

    def find_class(self, module, name):
        try:
            return self._globals[module, name]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refused to load the global {module}.{name}: a CIFAR-10 batch holds only dicts, lists, "
                "bytes, ints and NumPy arrays"
            ) from None


def _arrays_in_place(obj):
    """Replace the array stand-ins inside ``obj``'s dicts and lists by their arrays."""
    pending, seen = [obj], set()
    while pending:
        container = pending.pop()
        if id(container) in seen:
            continue
        seen.add(id(container))
        items = container.items() if isinstance(container, dict) else enumerate(container)
        for key, value in list(items):
            if isinstance(value, _ArrayStandIn):
                if value.array is None:
                    raise pickle.UnpicklingError("an array without its data")
                container[key] = value.array
            elif isinstance(value, (dict, list)):
                pending.append(value)
    return obj


def restricted_load(path):
    """Unpickle ``path`` (``encoding="bytes"``, as the official files need) with the restricted unpickler."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            obj = _RestrictedUnpickler(f, encoding="bytes").load()
        if isinstance(obj, _ArrayStandIn):
            return _arrays_in_place([obj])[0]
        return _arrays_in_place(obj) if isinstance(obj, (dict, list)) else obj
    except FileNotFoundError:
        raise
    except EOFError as e:
        raise DatasetFormatError(f"{path} is truncated (the pickle ends early)") from e
    except (pickle.UnpicklingError, ValueError, TypeError, AttributeError, IndexError, KeyError, OverflowError,
            RecursionError, MemoryError) as e:
        raise DatasetFormatError(f"{path} is not a valid CIFAR-10 pickle: {type(e).__name__}: {str(e)[:300]}") \
            from None


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
    if data.nbytes > path.stat().st_size:  # the stand-ins build arrays from the file's bytes only
        raise DatasetFormatError(f"{path}: 'data' holds {data.nbytes} bytes, more than the file itself")
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
    try:
        return [n.decode("utf-8") if isinstance(n, bytes) else n for n in names]
    except UnicodeDecodeError:
        raise DatasetFormatError(f"{path}: 'label_names' holds a name that is not UTF-8 text") from None


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
    if len(labels) and (labels.max() >= len(classes) or labels.min() < 0):
        bad = labels.max() if labels.max() >= len(classes) else labels.min()
        raise DatasetFormatError(f"{folder}: label {bad} found, but {META_FILE} names {len(classes)} classes")
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
    if member.size > MAX_MEMBER_BYTES:
        raise DatasetFormatError(
            f"{tarball} holds {member.name!r} of {member.size} bytes; the official members are at most "
            f"{MAX_MEMBER_BYTES} bytes, so this is not the official tarball"
        )
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
