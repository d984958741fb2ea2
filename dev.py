#!/usr/bin/env python3
"""Set up a virtual environment in .venv (once) and run the main job or the test suite.

    python3 dev.py train [ARGS...]   # cnnkit train (the main job) with optional arguments, run in
                                     # the current folder (relative paths are yours; runs/ goes here)
    python3 dev.py test  [ARGS...]   # the test suite, run in the repository (pytest arguments pass through)

Needs nothing but Python >= 3.10. Re-installs only when pyproject.toml changes. Both install the
oneDNN kernels (``cnnkit[onednn]``) where a wheel exists; ``CNNKIT_BACKEND=numpy`` runs without them.
Under an MPI launcher (`.venv/bin/mpiexec -n 2 python3 dev.py train`) every rank runs this script;
the install is done by whichever gets the lock first.
"""
import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")


def ensure_env(extras: str) -> None:
    if os.name == "nt":
        return _ensure_env(extras)
    import fcntl
    import tempfile

    # Ranks started together by mpiexec must not install into the same .venv at once.
    lock = Path(tempfile.gettempdir()) / f"cnnkit-dev-{hashlib.sha256(str(ROOT).encode()).hexdigest()[:12]}.lock"
    with open(lock, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        _ensure_env(extras)


def _ensure_env(extras: str) -> None:
    stamp = VENV / f".installed-{extras or 'base'}"
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text() == digest:
        return
    if not PYTHON.exists():
        print(f"creating virtual environment in {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    spec = f".[{extras}]" if extras else "."
    print(f"installing cnnkit{f'[{extras}]' if extras else ''} into {VENV} (first run only)", flush=True)
    subprocess.run([str(PYTHON), "-m", "pip", "install", "--quiet", "--upgrade", "pip"], check=True)
    subprocess.run([str(PYTHON), "-m", "pip", "install", "--quiet", "-e", spec], cwd=ROOT, check=True)
    stamp.write_text(digest)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("train", "test"):
        print(__doc__)
        return 2
    command, rest = argv[0], argv[1:]
    if command == "train":
        ensure_env("onednn")  # the oneDNN kernels where a wheel exists (x86-64 Linux); NumPy elsewhere
        # From the folder the user is in, so that paths they type (--data-dir, --out, --resume)
        # and the runs/ folder are where they expect.
        # close_fds=False: an MPI launcher's PMI_FD connection must reach the cnnkit process.
        return subprocess.call([str(PYTHON), "-m", "cnnkit", "train", *rest], close_fds=False)
    ensure_env("test")
    workers = ["-n", "2"] if not any(a.startswith("-n") for a in rest) else []
    # Two pytest workers on two cores: one BLAS/OpenMP thread each, or the threads oversubscribe
    # the cores and spin (matrix products then run 10-25x slower).
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.call([str(PYTHON), "-m", "pytest", "-q", *workers, *rest], cwd=ROOT, env=env)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
