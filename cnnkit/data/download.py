"""Where dataset files live, how a missing one is downloaded, and the errors that say what to do.

Lookup order for the data root: the ``root`` argument, else ``$CNNKIT_DATA``, else
``~/.cache/cnnkit``. Each dataset keeps its files in ``<root>/<folder>/``.

A download streams into a temporary file in the destination folder, computes the MD5 on the way,
and only when it matches the official checksum is the file renamed (atomically) to its final name.
So a file under its final name is always complete; an interrupted or corrupted download leaves
nothing behind.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from http.client import HTTPException
from urllib.request import urlopen

DEFAULT_ROOT = "~/.cache/cnnkit"
ENV_VAR = "CNNKIT_DATA"
CHUNK_SIZE = 1 << 20
TIMEOUT_S = 60


class DatasetNotFoundError(FileNotFoundError):
    """A dataset file is missing and could not be downloaded (offline, refused, bad checksum)."""


class DatasetFormatError(ValueError):
    """A dataset file exists but is not what it should be (wrong magic number, truncated, ...)."""


@dataclass(frozen=True)
class RemoteFile:
    """One official file: its name on disk, where to get it and its MD5 checksum."""

    filename: str
    url: str
    md5: str


def data_root(root=None) -> Path:
    """The folder that holds all datasets: ``root``, else ``$CNNKIT_DATA``, else ``~/.cache/cnnkit``."""
    if root is None:
        root = os.environ.get(ENV_VAR) or DEFAULT_ROOT
    return Path(root).expanduser()


def md5sum(path) -> str:
    """The MD5 hex digest of a file, read in chunks."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK_SIZE), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _how_to_fix(remote: RemoteFile, folder: Path) -> str:
    return (
        f"To install it by hand (e.g. on a machine without internet), download\n"
        f"    {remote.url}\n"
        f"elsewhere and copy it to\n"
        f"    {folder / remote.filename}\n"
        f"(expected MD5 {remote.md5}). Or point the loader at a folder that already holds the "
        f"dataset with load(..., root=...) or the {ENV_VAR} environment variable."
    )


def missing_file_error(remote: RemoteFile, folder: Path, reason: str) -> DatasetNotFoundError:
    """The error for a file that is not in ``folder`` and could not be fetched, and what to do."""
    return DatasetNotFoundError(
        f"{remote.filename} is not in {folder} and {reason}.\n" + _how_to_fix(remote, folder)
    )


def ensure_file(remote: RemoteFile, folder, download: bool = True, verify: bool = False, progress: bool = True) -> Path:
    """Return the path of ``remote.filename`` in ``folder``, downloading it first if it is missing.

    ``download=False`` raises ``DatasetNotFoundError`` for a missing file without touching the
    network. ``verify=True`` also checks the MD5 of a file that is already present (a download is
    always checked).
    """
    folder = Path(folder)
    path = folder / remote.filename
    if path.is_file():
        if verify:
            actual = md5sum(path)
            if actual != remote.md5:
                raise DatasetFormatError(
                    f"{path} has MD5 {actual}, but the official file has {remote.md5}: the file is "
                    f"damaged or a different version. Delete it to download it again from {remote.url}."
                )
        return path
    if not download:
        raise missing_file_error(remote, folder, "downloading is switched off (download=False)")
    return download_file(remote, folder, progress=progress)


def download_file(remote: RemoteFile, folder, progress: bool = True) -> Path:
    """Download ``remote`` into ``folder``, check its MD5 and move it into place atomically."""
    folder = Path(folder)
    final = folder / remote.filename
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=f".{remote.filename}.", suffix=".part")
    except OSError as e:
        raise missing_file_error(remote, folder, f"the folder cannot be written to ({e})") from e
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            actual = _stream(remote, out, folder, progress)
        if actual != remote.md5:
            raise missing_file_error(
                remote, folder,
                f"the download from {remote.url} has MD5 {actual} instead of the official "
                f"{remote.md5} (a damaged transfer or a changed file; nothing was kept)",
            )
        tmp.chmod(0o644)  # mkstemp makes it private (0600); a dataset file is ordinary data
        os.replace(tmp, final)
    finally:
        # Never leave a partial download behind, whatever went wrong.
        tmp.unlink(missing_ok=True)
    return final


def _stream(remote: RemoteFile, out, folder: Path, progress: bool) -> str:
    """Copy the bytes at ``remote.url`` into ``out``; return their MD5."""
    digest = hashlib.md5()
    try:
        with urlopen(remote.url, timeout=TIMEOUT_S) as response:
            total = _content_length(response)
            with _progress_bar(remote.filename, total, progress) as advance:
                for chunk in iter(lambda: response.read(CHUNK_SIZE), b""):
                    out.write(chunk)
                    digest.update(chunk)
                    advance(len(chunk))
    except (OSError, HTTPException, ValueError) as e:
        # URLError (an OSError): no network, DNS, refused, HTTP error; OSError: reset, timeout;
        # HTTPException: connection cut mid-transfer; ValueError: malformed URL.
        reason = getattr(e, "reason", None) or e
        raise missing_file_error(remote, folder, f"downloading it from {remote.url} failed ({reason})") from e
    return digest.hexdigest()


def _content_length(response):
    headers = getattr(response, "headers", None)
    length = headers.get("Content-Length") if headers is not None else None
    try:
        return int(length) if length is not None else None
    except ValueError:
        return None


class _progress_bar:
    """A rich download bar (bytes, speed, time left) as a context manager yielding ``advance(n)``."""

    def __init__(self, description: str, total, enabled: bool):
        self.description, self.total, self.enabled = description, total, enabled
        self.progress = None

    def __enter__(self):
        if not self.enabled:
            return lambda n: None
        from rich.console import Console
        from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                                   TransferSpeedColumn)

        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(),
            TransferSpeedColumn(), TimeRemainingColumn(), console=Console(stderr=True),
        )
        self.progress.start()
        task = self.progress.add_task(f"downloading {self.description}", total=self.total)
        return lambda n: self.progress.advance(task, n)

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.stop()
        return False
