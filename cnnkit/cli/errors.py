"""How the command line fails: one line a person can act on, and an exit code.

* :class:`UsageError` — the command line itself is wrong (a bad value, flags that contradict
  each other or the checkpoint): exit code 2, like argparse's own errors.
* :class:`CommandError` — the command was fine but could not be carried out (a file that cannot
  be read, a run that diverged, data that is not there): exit code 1.

Both carry a finished sentence naming the file or flag and what to do. :func:`reading` turns
the many ways a file can be bad (``SafetensorError``, ``BadZipFile``, ``UnpicklingError``,
``struct.error``, ``MemoryError``, ...) into a :class:`CommandError` that names the file;
:func:`one_line` renders anything else that escapes a command. ``--debug`` (or
``CNNKIT_DEBUG=1``) shows the traceback instead.
"""
from __future__ import annotations

import json
import pickle
import struct
import zipfile
from contextlib import contextmanager

EXIT_RUNTIME = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class UsageError(ValueError):
    """The command line is wrong: exit code 2."""


class CommandError(RuntimeError):
    """The command could not be carried out: exit code 1. The message is the whole story."""


def _safetensor_error():
    try:
        from safetensors import SafetensorError
    except ImportError:  # pragma: no cover - safetensors is a dependency
        return ()
    return (SafetensorError,)


def _flat(text: str) -> str:
    """One line: newlines and runs of spaces become single spaces."""
    return " ".join(str(text).split())


def describe(exc: BaseException) -> str:
    """What went wrong, in words, for an exception raised while reading a file."""
    detail = _flat(exc) or type(exc).__name__
    if isinstance(exc, MemoryError):
        return "it declares more data than this machine can hold (MemoryError): the file is damaged or hostile"
    if isinstance(exc, _safetensor_error()):
        return f"not a valid .safetensors file ({detail})"
    if isinstance(exc, zipfile.BadZipFile):
        return f"not a valid zip archive ({detail}); it may be truncated"
    if isinstance(exc, pickle.UnpicklingError):
        return f"its pickle is invalid or was refused ({detail})"
    if isinstance(exc, struct.error):
        return f"it is truncated or malformed ({detail})"
    if isinstance(exc, UnicodeDecodeError):
        return f"its text is not UTF-8 ({detail})"
    if isinstance(exc, json.JSONDecodeError):
        return f"its metadata is not valid JSON ({detail})"
    if isinstance(exc, EOFError):
        return "it ends early (truncated)"
    if isinstance(exc, RecursionError):
        return "it nests too deeply to be a real file"
    return detail


# Everything a damaged or hostile file can raise inside a reader.
FILE_CONTENT_ERRORS = (ValueError, TypeError, KeyError, IndexError, AttributeError, EOFError, MemoryError,
                       RecursionError, struct.error, pickle.UnpicklingError, zipfile.BadZipFile,
                       *_safetensor_error())


@contextmanager
def reading(path, what: str = "checkpoint", hint: str = ""):
    """Turn a failure to read ``path`` into a one-line :class:`CommandError` naming the file.

    ``what`` says what the file should be ("checkpoint", "weights file"); ``hint`` what to do.
    Errors that already name the file and the field (cnnkit's own ``ValueError``) keep their words.
    """
    hint = f"; {hint}" if hint else ""
    try:
        yield
    except (UsageError, CommandError):
        raise
    except IsADirectoryError:
        raise CommandError(f"{path} is a folder, not a {what} file{hint}") from None
    except FileNotFoundError:
        raise CommandError(f"{path} does not exist{hint}") from None
    except PermissionError:
        raise CommandError(f"{path} cannot be read (permission denied)") from None
    except OSError as exc:
        raise CommandError(f"{path} cannot be read ({_flat(exc.strerror or exc)})") from exc
    except FILE_CONTENT_ERRORS as exc:
        if str(path) in str(exc):  # cnnkit's own readers name the file and the field already
            raise CommandError(f"{_flat(exc).rstrip('.')}{hint}") from exc
        raise CommandError(f"{path} cannot be read as a {what}: {describe(exc)}{hint}") from exc
    except Exception as exc:  # noqa: BLE001 - whatever else a reader trips over, the file is the cause
        raise CommandError(f"{path} cannot be read as a {what}: {type(exc).__name__}: {_flat(exc)}{hint}") from exc


def missing_optional(exc: ImportError) -> tuple[str, str] | None:
    """``(package, install command)`` for an optional package that is missing, or None."""
    name = (getattr(exc, "name", None) or "").split(".")[0]
    text = str(exc)
    # cnnkit runs from a checkout (dev.py's .venv or `pip install -e .`): name the packages to
    # install, not an extra of a cnnkit distribution that pip cannot find.
    for package, install in (("onnxruntime", "pip install onnx onnxruntime"), ("onnx", "pip install onnx onnxruntime"),
                             ("mpi4py", "pip install mpi4py mpich")):
        if name == package or f"'{package}'" in text:
            return package, install
    return None


def one_line(exc: BaseException) -> tuple[str, int]:
    """``(message, exit code)`` for an exception that escaped a command."""
    if isinstance(exc, UsageError):
        return _flat(exc), EXIT_USAGE
    if isinstance(exc, CommandError):
        return _flat(exc), EXIT_RUNTIME
    if isinstance(exc, ImportError):
        missing = missing_optional(exc)
        if missing:
            package, install = missing
            return (f"this command needs the optional package {package!r}, which is not installed: {install} "
                    "(into the environment cnnkit runs in, e.g. .venv/bin/pip install ...)"), EXIT_RUNTIME
        return _flat(exc), EXIT_RUNTIME
    from ..data.download import DatasetNotFoundError

    if isinstance(exc, DatasetNotFoundError):  # data a command looked up without common.load_dataset
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else "dataset files not found"
        return (f"{first_line} Pass --data-dir FOLDER with the dataset's official files in its subfolder "
                "(or set CNNKIT_DATA)"), EXIT_RUNTIME
    if isinstance(exc, MemoryError):
        return ("out of memory: use a smaller --batch-size or model, or a smaller --input "
                "(run with --debug for where it happened)"), EXIT_RUNTIME
    if isinstance(exc, FloatingPointError):
        return _flat(exc), EXIT_RUNTIME
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError)) and exc.filename:
        return f"{exc.filename}: {_flat(exc.strerror or exc)}", EXIT_RUNTIME
    if isinstance(exc, (ValueError, TypeError, KeyError, OSError, RuntimeError, ArithmeticError, struct.error,
                        zipfile.BadZipFile, *_safetensor_error())):
        text = _flat(exc.args[0]) if isinstance(exc, KeyError) and exc.args else describe(exc)
        return text, EXIT_RUNTIME
    # Not a failure a user caused: still one line, but say it is a bug worth reporting.
    return (f"internal error {type(exc).__name__}: {_flat(exc)} (a bug in cnnkit: please report it with the "
            "traceback that --debug prints)"), EXIT_RUNTIME
