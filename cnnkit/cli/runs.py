"""Where a training run writes, so that runs never overwrite each other without being asked to.

* Without ``--out`` a run gets ``runs/DATASET-MODEL`` (``MODEL`` is ``spec`` for a spec); when that
  folder exists it gets the next free ``runs/DATASET-MODEL-2``, ``-3``, ... The folder is claimed
  with an exclusive ``mkdir``, so two runs started at once never share one.
* ``--out DIR`` is the explicit choice: a new folder, or an existing one whose run files
  (checkpoints, history, report) the new run replaces — said so when it starts.
* ``--resume CKPT`` continues in the folder that holds ``CKPT``.
* A run that fails before finishing its first epoch (a bad learning rate, missing data) removes
  the folder it created, so failed attempts leave nothing that looks like a result.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import UsageError

DEFAULT_PARENT = Path("runs")
# The files `cnnkit train` writes into its folder; a failed first epoch removes only these.
RUN_FILES = ("last.safetensors", "best.safetensors", "interrupted.safetensors", "history.json", "history.csv",
             "diagnostics.json", "diagnostics.png", "report.html")


@dataclass
class RunFolder:
    path: Path
    created: bool  # made by this run (so this run may remove it again)
    reused: bool = False  # an explicit --out that already held a run

    def discard_if_unfinished(self, epochs_done: int) -> bool:
        """Remove the folder if this run created it and completed no epoch; True if removed."""
        if not self.created or epochs_done > 0 or not self.path.is_dir():
            return False
        for name in RUN_FILES:
            (self.path / name).unlink(missing_ok=True)
        from ..train.callbacks import remove_stale_temporaries

        remove_stale_temporaries(self.path)
        try:
            self.path.rmdir()  # only if empty: never delete what someone else put there
        except OSError:
            return False
        return True


def _holds_a_run(folder: Path) -> bool:
    return any((folder / name).exists() for name in RUN_FILES)


def claim_run_folder(out, default_name: str, parent: Path = DEFAULT_PARENT) -> RunFolder:
    """The folder for a new run: ``out`` if given, else the first free ``parent/default_name[-N]``."""
    if out:
        folder = Path(out)
        if folder.exists() and not folder.is_dir():
            raise UsageError(f"--out {out} is a file, not a folder: give a folder for the run")
        existed = folder.is_dir()
        reused = existed and _holds_a_run(folder)
        folder.mkdir(parents=True, exist_ok=True)
        return RunFolder(folder, created=not existed, reused=reused)
    parent.mkdir(parents=True, exist_ok=True)
    for number in range(1, 100_000):
        folder = parent / (default_name if number == 1 else f"{default_name}-{number}")
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        return RunFolder(folder, created=True)
    raise UsageError(f"{parent} holds 100,000 runs named {default_name}: choose a folder with --out")
