"""Records of an untrusted zip archive (``.pt`` and ``.npz`` files), checked before they are inflated.

A zip record says how many bytes it holds; a hostile one can say anything, and a deflated
record of a few hundred KiB can inflate to a gigabyte. :class:`ZipRecords` checks each record
before reading it:

* its compression is stored or deflate (what ``torch.save`` and ``numpy.savez`` write; bzip2
  and lzma, which can expand a few bytes into gigabytes, are refused);
* the bytes wanted fit in the record, and the record could hold them: deflate never turns one
  compressed byte into more than 1032 (zlib's technical notes), a stored record holds its size;
* records do not overlap: their compressed sizes add up to at most the file's size (overlapping
  records are the trick of zip bombs that make one stream count many times).

Then it streams the record by 1 MiB chunks straight into the array that keeps it.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

DEFLATE_MAX_RATIO = 1032
READ_CHUNK = 1 << 20  # bytes per read while streaming a record into its array


def read_into(file, buffer: np.ndarray) -> int:
    """Fill the 1-D uint8 ``buffer`` from ``file`` by chunks; return how many bytes came."""
    view = memoryview(buffer)
    filled = 0
    while filled < buffer.nbytes:
        got = file.readinto(view[filled:filled + READ_CHUNK])
        if not got:
            break
        filled += got
    return filled


class ZipRecords:
    """The records of ``archive`` (the zip at ``path``); problems raise ``error`` naming the file."""

    def __init__(self, path, archive: zipfile.ZipFile, error=ValueError):
        self.path = Path(path)
        self.archive = archive
        self.error = error
        self.file_size = self.path.stat().st_size
        self.compressed_total = 0

    def info(self, name: str, what: str = "record") -> zipfile.ZipInfo:
        try:
            return self.archive.getinfo(name)
        except KeyError:
            raise self.error(f"{self.path}: {what} {name!r} is missing from the archive") from None

    def check(self, info: zipfile.ZipInfo, nbytes: int, what: str = "record") -> None:
        """Raise unless ``info`` can deliver ``nbytes`` bytes as a well-formed record would."""
        name = info.filename
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise self.error(
                f"{self.path}: {what} {name!r} uses zip compression method {info.compress_type}; only "
                "stored and deflated records are read"
            )
        if info.file_size < nbytes:
            raise self.error(f"{self.path}: {what} {name!r} holds {info.file_size} bytes, {nbytes} expected")
        self.compressed_total += info.compress_size
        if self.compressed_total > self.file_size:
            raise self.error(
                f"{self.path}: {what} {name!r} overlaps other records (their compressed sizes add up to "
                f"{self.compressed_total} bytes in a {self.file_size}-byte file)"
            )
        stored = info.compress_type == zipfile.ZIP_STORED
        if nbytes > info.compress_size * (1 if stored else DEFLATE_MAX_RATIO):
            raise self.error(
                f"{self.path}: {what} {name!r} declares {nbytes} bytes but holds {info.compress_size} "
                f"{'stored' if stored else 'deflated'} bytes, which cannot hold that many"
            )

    def read(self, name: str, nbytes: int | None = None, what: str = "record") -> np.ndarray:
        """The first ``nbytes`` (default: all) bytes of record ``name`` as a new uint8 array."""
        info = self.info(name, what)
        nbytes = info.file_size if nbytes is None else nbytes
        self.check(info, nbytes, what)
        data = np.empty(nbytes, dtype=np.uint8)
        with self.archive.open(info) as f:
            filled = read_into(f, data)
        if filled < nbytes:
            raise self.error(f"{self.path}: {what} {name!r} holds {filled} bytes, {nbytes} expected")
        return data
