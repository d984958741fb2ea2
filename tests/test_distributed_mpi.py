"""Data-parallel training under ``mpiexec -n 2``: each test starts real MPI jobs in subprocesses.

Skipped without mpi4py or an ``mpiexec`` (``pip install 'cnnkit[mpi]'``; the test extras have both).
Each job is a few seconds of small models on two ranks, with a timeout so a hang fails the test.
"""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("mpi4py")

HERE = Path(__file__).resolve().parent
WORKER = HERE / "distributed_worker.py"
ROOT = HERE.parent


def _mpiexec():
    beside = Path(sys.executable).parent / "mpiexec"  # pip's mpich puts it next to python
    return str(beside) if beside.exists() else shutil.which("mpiexec")


MPIEXEC = _mpiexec()
pytestmark = pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec (pip install mpich)")


def mpirun(*args, ranks=2, timeout=120, cwd=None):
    """Run ``args`` (after the python executable) on ``ranks`` ranks; returns the finished process."""
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for name in ("PMI_SIZE", "PMI_RANK", "PMI_FD", "OMPI_COMM_WORLD_SIZE", "CNNKIT_NUM_THREADS"):
        env.pop(name, None)  # never inherit a launch; cnnkit's own per-rank thread count
    return subprocess.run([MPIEXEC, "-n", str(ranks), sys.executable, *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=cwd or ROOT)


def seconds_after_failure(proc) -> float:
    """From the moment the failing rank raised (it prints the time) to the end of the whole job."""
    failed_at = float(next(line for line in proc.stderr.splitlines() if line.startswith("FAILING AT ")).split()[-1])
    return time.time() - failed_at


def results(proc) -> dict:
    out = {}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            item = json.loads(line[len("RESULT "):])
            out.setdefault(item.pop("case"), []).append(item)
    return out


@pytest.fixture(scope="module")
def api():
    proc = mpirun(str(WORKER), "api")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return results(proc)


def test_collectives_on_two_ranks(api):
    (r,) = api["collectives"]
    assert r["world"] == 2 and r["sum"] == [3.0, 10.0]
    assert r["max"] == [2.0, -2.0] and r["min"] == [1.0, -3.0] and r["prod"] == [2.0, 6.0] and r["avg"] == [1.5, -2.5]
    assert r["broadcast_from_1"] == [1, 1, 1] and r["async_sum_ok"]
    # a reduction moves on its own (the communication thread), not only when the trainer waits
    assert r["progressed_alone"] and r["progressed_sum_ok"]
    assert r["gather"] == [{"rank": 0}, {"rank": 1}]


def test_distributed_sampler_covers_every_sample_once_per_epoch(api):
    (r,) = api["sampler"]
    for key, epochs in r["shards"].items():
        n, drop_last = int(key.split("-")[0]), key.endswith("True")
        for ranks in epochs:
            assert len(ranks[0]) == len(ranks[1])
            union = sorted(ranks[0] + ranks[1])
            if drop_last:
                assert len(set(union)) == len(union) == n - n % 2
            else:  # 11 samples: one is padded in (seen twice), every one at least once
                assert set(union) == set(range(n)) and len(union) == n + n % 2
        assert epochs[0] != epochs[1]  # set_epoch reshuffles


def test_sync_batchnorm_equals_one_batchnorm_on_the_whole_batch(api):
    (r,) = api["sync_batchnorm"]
    assert r["max_error"] < 1e-12, r


@pytest.mark.parametrize("dtype, tol", [("float64", 1e-10), ("float32", 1e-5)])
@pytest.mark.parametrize("batch_norm", [False, True], ids=["no-bn", "syncbn"])
def test_ddp_two_ranks_of_half_the_batch_equal_one_process(api, dtype, tol, batch_norm):
    runs = [r for r in api["ddp"] if r["dtype"] == dtype and r["batch_norm"] == batch_norm
            and r["micro"] == 1 and not r["extras"]]
    assert {r["buckets"] > 1 for r in runs} == {False, True}  # one bucket, and one per parameter
    for r in runs:
        assert r["max_error"] < tol, r
        assert r["ranks_differ_by"] == 0.0, r  # every rank holds exactly the same weights
        assert r["stats"]["backwards"] == 3


def test_ddp_overlaps_no_sync_accumulates_frozen_and_unused_are_skipped(api):
    many = [r for r in api["ddp"] if r["buckets"] > 1 and r["micro"] == 1 and not r["extras"]]
    for r in many:  # every bucket started while backward was still running
        assert r["stats"]["buckets_started_in_backward"] == r["stats"]["buckets"]
    (accumulated,) = [r for r in api["ddp"] if r["micro"] == 2]
    assert accumulated["max_error"] < 1e-10 and accumulated["stats"]["backwards"] == 3  # no_sync: no reduction
    (extras,) = [r for r in api["ddp"] if r["extras"]]
    assert extras["max_error"] < 1e-10 and extras["ranks_differ_by"] == 0.0
    assert extras["frozen_grad_is_none"] and extras["unused_grad_is_none"] and extras["frozen_unchanged"]


def test_cli_trains_on_two_ranks_and_resumes_on_one(tmp_path, capsys):
    out = tmp_path / "two"
    proc = mpirun("-m", "cnnkit", "train", "--epochs", "2", "--limit", "600", "--out", str(out), "--no-progress",
                     "--no-report", "--sync-bn")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert sum(line.startswith("training ") for line in lines) == 1  # rank 0 alone prints
    threads = max(1, (os.cpu_count() or 1) // 2)  # cores / ranks
    assert f"(16 per rank on 2 ranks, {threads} thread(s) each, SyncBatchNorm)" in lines[0]
    assert [line.split(" |")[0] for line in lines if line.startswith("epoch ")] == ["epoch 1/2", "epoch 2/2"]
    assert sum(line.startswith("test accuracy") for line in lines) == 1
    history = json.loads((out / "history.json").read_text())
    assert len(history) == 2 and history[-1]["train_top1"] > 0.5
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))

    import cnnkit
    from cnnkit.cli import main

    ckpt = cnnkit.io.load_checkpoint(out / "last.safetensors")
    assert len(ckpt.training_state["rank_rngs"]) == 2
    assert not any(k.startswith("module.") for k in ckpt.model.state_dict())  # plain keys, loads anywhere
    one = tmp_path / "one"  # a resumed run continues in its folder: resume a copy of the 2-rank run
    shutil.copytree(out, one)
    assert main(["train", "--epochs", "3", "--no-progress", "--no-report", "--resume", str(one / "last.safetensors")]) == 0
    text = capsys.readouterr().out
    assert "resumed from" in text and "after epoch 2" in text and "epoch 3/3" in text and "epoch 2/3" not in text


def test_resume_on_the_same_number_of_ranks_continues_exactly(tmp_path):
    """Each rank gets back its own random streams; the shards follow the epoch: bit for bit."""
    import numpy as np

    import cnnkit

    args = ["-m", "cnnkit", "train", "--limit", "200", "--schedule", "none", "--augment", "--no-progress", "--no-report"]
    for extra in (["--epochs", "2", "--out", str(tmp_path / "whole")], ["--epochs", "1", "--out", str(tmp_path / "b")]):
        proc = mpirun(*args, *extra)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    # the resumed run takes its settings from the checkpoint and continues in its folder
    proc = mpirun("-m", "cnnkit", "train", "--epochs", "2", "--no-progress", "--no-report", "--resume",
                  str(tmp_path / "b" / "last.safetensors"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    whole = cnnkit.io.load_state_dict(tmp_path / "whole" / "last.safetensors")
    resumed = cnnkit.io.load_state_dict(tmp_path / "b" / "last.safetensors")
    for key in whole:
        np.testing.assert_array_equal(resumed[key], whole[key])


def test_a_rank_that_raises_stops_the_job_within_seconds(tmp_path):
    out = tmp_path / "run"
    proc = mpirun(str(WORKER), "cli-fail", str(out))
    assert proc.returncode != 0
    assert "error on rank 1 of 2: ValueError: injected failure: bad batch on rank 1; stopping all 2 ranks" in proc.stderr
    assert seconds_after_failure(proc) < 15
    # The failure came in epoch 2: epoch 1's checkpoint is whole, and nothing is half-written.
    import cnnkit

    assert cnnkit.io.load_checkpoint(out / "last.safetensors").training_state["epoch"] == 1
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_a_nan_loss_on_one_rank_stops_the_job(tmp_path):
    proc = mpirun(str(WORKER), "cli-nan", str(tmp_path / "run"))
    assert proc.returncode != 0
    assert "error on rank 1 of 2: training stopped: the loss became nan on rank 1 of 2" in proc.stderr
    assert "lower --lr" in proc.stderr  # the CLI's one line says what to change
    assert seconds_after_failure(proc) < 15


def test_ctrl_c_saves_on_rank_0_and_ends_every_rank(tmp_path):
    import signal

    import cnnkit

    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([MPIEXEC, "-n", "2", sys.executable, "-m", "cnnkit", "train", "--epochs", "1000",
                             "--limit", "400", "--out", str(tmp_path), "--no-progress", "--no-report"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        for line in proc.stdout:  # wait for a complete epoch, then press Ctrl-C
            if line.startswith("epoch 2/"):
                break
        pressed = time.time()
        proc.send_signal(signal.SIGINT)  # mpiexec passes Ctrl-C on to every rank
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert time.time() - pressed < 15
    assert proc.returncode == 130, stdout + stderr
    assert "interrupted during epoch" in stdout and "stopping all 2 ranks" in stderr
    assert cnnkit.io.load_checkpoint(tmp_path / "interrupted.safetensors").training_state["epoch"] >= 2
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_an_uncaught_exception_on_one_rank_stops_the_job(tmp_path):
    proc = mpirun(str(WORKER), "uncaught")
    assert proc.returncode != 0 and "barrier_returned" not in proc.stdout
    assert "ValueError: rank 1 found bad data" in proc.stderr
    assert "uncaught ValueError on rank 1 of 2; stopping all 2 ranks" in proc.stderr
    assert seconds_after_failure(proc) < 15
