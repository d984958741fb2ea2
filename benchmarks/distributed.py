"""Data-parallel training on this machine, and what it predicts for a cluster.

One command measures and rewrites the distributed section of ``BENCHMARKS.md`` (the text between
``<!-- distributed:begin -->`` and ``<!-- distributed:end -->``)::

    python benchmarks/distributed.py            # ~10 minutes on 2 cores
    python benchmarks/distributed.py --quick    # fewer rounds and steps, no MNIST run (~3 minutes)

What it measures, for ResNet-20 (CIFAR, global batch 128) and LeNet-5 (MNIST, global batch 128):

* **1 process x 2 threads** (cnnkit's default on this machine) against **2 MPI ranks x 1 thread**
  (``mpiexec -n 2``, DistributedDataParallel, 64 images per rank): training-step time and
  throughput. The two launch alternately, round after round, so drift on the shared machine hits
  both; figures are medians.
* Inside the 2-rank job, interleaved step by step: the DDP step (bucketed allreduces overlapped
  with backward), the same step with every allreduce after backward (``no_sync`` backward, then
  all buckets), and the step without any communication (each rank alone). The time DDP waits
  after backward is the communication the overlap did not hide.
* The allreduce itself: latency (8 bytes) and bandwidth (1-16 MB) between the two ranks.
* Unless ``--quick``: the MNIST recipe end to end (``cnnkit train --dataset mnist``), one process
  against ``mpiexec -n 2``: test accuracy and wall time.

Then a written model, fed with these measurements, predicts throughput and scaling efficiency for
2-64 machines on 10 and 100 Gbit/s networks. Inputs are random arrays of the datasets' shapes
(step time does not depend on the pixel values); raw results go to
``benchmarks/results/distributed.json``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

BEGIN, END = "<!-- distributed:begin -->", "<!-- distributed:end -->"
MODELS = {"resnet20": (3, 32, 32), "lenet5": (1, 28, 28)}
GLOBAL_BATCH = 128
# Assumed per-message network latency (one ring hop) for the model: not measurable here.
NETWORKS = {"10 Gbit/s (TCP)": (10e9 / 8, 25e-6), "100 Gbit/s (RDMA)": (100e9 / 8, 3e-6)}
MACHINES = (2, 4, 8, 16, 32, 64)


# -- workers: what each launched process runs -----------------------------------------------------
def _model_and_data(name, batch):
    import numpy as np

    import cnnkit

    model = cnnkit.models.create(name)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch,) + MODELS[name]).astype(np.float32)
    y = rng.integers(0, 10, batch)
    opt = cnnkit.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    return model, opt, cnnkit.nn.CrossEntropyLoss(), x, y


def worker_single(name, steps, warmup):
    """One process on every core: the plain training step at the global batch."""
    model, opt, lossf, x, y = _model_and_data(name, GLOBAL_BATCH)
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        opt.zero_grad()
        lossf(model(x), y)
        model.backward(lossf.backward(), input_grad=False)
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    from cnnkit.functional.parallel import num_threads

    print("RESULT " + json.dumps({"step_s": statistics.median(times), "threads": num_threads()}), flush=True)


def worker_ddp(name, steps, warmup):
    """One of the ranks: DDP step, allreduce-after-backward step, no-communication step, interleaved."""
    import numpy as np

    from cnnkit import distributed as dist
    from cnnkit.functional.parallel import num_threads
    from cnnkit.nn.parallel import DistributedDataParallel, _Reduction

    dist.init_process_group()
    world = dist.get_world_size()
    model, opt, lossf, x, y = _model_and_data(name, GLOBAL_BATCH // world)
    ddp = DistributedDataParallel(model)

    def forward_backward(sync):
        opt.zero_grad()
        lossf(ddp(x), y)
        if sync:
            ddp.backward(lossf.backward(), input_grad=False)
        else:
            with ddp.no_sync():
                ddp.backward(lossf.backward(), input_grad=False)

    windows = []

    def overlapped():
        waited, window = ddp.comm_stats["wait_s"], ddp.comm_stats["overlap_window_s"]
        forward_backward(True)
        opt.step()
        windows.append(ddp.comm_stats["overlap_window_s"] - window)
        return ddp.comm_stats["wait_s"] - waited

    def after_backward():
        forward_backward(False)
        start = time.perf_counter()
        _Reduction(ddp).finish()  # every bucket now, then wait: the communication in full
        comm = time.perf_counter() - start
        opt.step()
        return comm

    def local():
        forward_backward(False)
        opt.step()
        return 0.0

    variants = {"ddp": overlapped, "after_backward": after_backward, "no_comm": local}
    samples = {k: [] for k in variants}
    comm = {k: [] for k in variants}
    for i in range(warmup + steps):
        for key, fn in variants.items():
            dist.barrier()
            start = time.perf_counter()
            c = fn()
            # The job's step is its slowest rank's; the slowest rank's wait is pure communication
            # (a faster rank also waits for it to catch up): max of the steps, min of the waits.
            t = np.array([time.perf_counter() - start, -c])
            dist.all_reduce(t, op="max")
            if i >= warmup:
                samples[key].append(float(t[0]))
                comm[key].append(float(-t[1]))

    alone = []  # the gradient buckets' allreduces with nothing else running, ranks in step
    buffers = [np.ones(n, dtype=np.float32) for n in ddp.bucket_sizes]
    for _ in range(20):
        dist.barrier()
        start = time.perf_counter()
        for buf in buffers:
            dist.all_reduce(buf)
        alone.append(time.perf_counter() - start)

    latency, bandwidth = [], {}
    for nbytes in (8, 1 << 20, 4 << 20, 16 << 20):
        buf = np.ones(max(1, nbytes // 4), dtype=np.float32)
        times = []
        for _ in range(30 if nbytes <= 1 << 20 else 10):
            dist.barrier()
            start = time.perf_counter()
            dist.all_reduce(buf)
            times.append(time.perf_counter() - start)
        if nbytes == 8:
            latency = statistics.median(times)
        else:
            bandwidth[nbytes] = nbytes / statistics.median(times)
    if dist.get_rank() == 0:
        grad_bytes = sum(p.data.nbytes for p in model.parameters() if p.requires_grad)
        print("RESULT " + json.dumps({
            "world": world, "threads": num_threads(), "buckets": len(ddp.bucket_sizes), "grad_bytes": grad_bytes,
            "bucket_bytes": [4 * n for n in ddp.bucket_sizes], "overlap_window_s": statistics.median(windows[warmup:]),
            "step_s": {k: statistics.median(v) for k, v in samples.items()},
            "comm_s": {k: statistics.median(v) for k, v in comm.items()},
            "allreduce_latency_s": latency, "allreduce_bytes_per_s": bandwidth,
            "gradient_allreduce_s": statistics.median(alone),
        }), flush=True)
    dist.destroy_process_group()


# -- the driver -----------------------------------------------------------------------------------
def _mpiexec():
    beside = Path(sys.executable).parent / "mpiexec"
    return str(beside) if beside.exists() else shutil.which("mpiexec")


def _env():
    env = dict(os.environ)
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "CNNKIT_NUM_THREADS",
                 "PMI_SIZE", "PMI_RANK", "PMI_FD"):
        env.pop(name, None)  # cnnkit's defaults: all cores for one process, cores / ranks under MPI
    env["PYTHONPATH"] = str(ROOT)
    return env


def _launch(command, timeout=900):
    proc = subprocess.run(command, capture_output=True, text=True, env=_env(), timeout=timeout, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def _result(stdout):
    return json.loads(next(line for line in stdout.splitlines() if line.startswith("RESULT "))[7:])


def measure(rounds, steps, warmup, log):
    me = [sys.executable, str(Path(__file__).resolve())]
    out = {}
    for name in MODELS:
        single, ddp = [], []
        for r in range(rounds):  # alternate the two launches: drift hits both
            single.append(_result(_launch(me + ["--worker", "single", name, str(steps), str(warmup)])))
            ddp.append(_result(_launch([_mpiexec(), "-n", "2"] + me + ["--worker", "ddp", name, str(steps), str(warmup)])))
            log(f"  {name} round {r + 1}/{rounds}: 1x{single[-1]['threads']} {1e3 * single[-1]['step_s']:.1f} ms, "
                f"2x{ddp[-1]['threads']} DDP {1e3 * ddp[-1]['step_s']['ddp']:.1f} ms "
                f"(after-backward {1e3 * ddp[-1]['step_s']['after_backward']:.1f}, "
                f"no comm {1e3 * ddp[-1]['step_s']['no_comm']:.1f})")
        med = statistics.median
        out[name] = {
            "single_threads": single[0]["threads"], "ddp_threads": ddp[0]["threads"],
            "single_step_s": med(r["step_s"] for r in single),
            "step_s": {k: med(r["step_s"][k] for r in ddp) for k in ddp[0]["step_s"]},
            "comm_s": {k: med(r["comm_s"][k] for r in ddp) for k in ddp[0]["comm_s"]},
            "buckets": ddp[0]["buckets"], "grad_bytes": ddp[0]["grad_bytes"], "bucket_bytes": ddp[0]["bucket_bytes"],
            "overlap_window_s": med(r["overlap_window_s"] for r in ddp),
            "allreduce_latency_s": med(r["allreduce_latency_s"] for r in ddp),
            "gradient_allreduce_s": med(r["gradient_allreduce_s"] for r in ddp),
            "allreduce_bytes_per_s": {k: med(r["allreduce_bytes_per_s"][k] for r in ddp)
                                      for k in ddp[0]["allreduce_bytes_per_s"]},
        }
    return out


def mnist_end_to_end(data_dir, log):
    """The MNIST recipe as users type it: one process, then two ranks; accuracy and wall time."""
    runs = {}
    for label, prefix in (("1 process x 2 threads", []), ("2 ranks x 1 thread", [_mpiexec(), "-n", "2"])):
        out_dir = tempfile.mkdtemp(prefix="cnnkit-dist-mnist-")
        command = prefix + [sys.executable, "-m", "cnnkit", "train", "--dataset", "mnist", "--data-dir", str(data_dir),
                            "--out", out_dir, "--no-progress", "--no-report"]
        start = time.perf_counter()
        stdout = _launch(command, timeout=1800)
        seconds = time.perf_counter() - start
        accuracy = float(re.search(r"test accuracy ([\d.]+)%", stdout).group(1))
        runs[label] = {"command": ("mpiexec -n 2 " if prefix else "") + "cnnkit train --dataset mnist --data-dir DIR",
                       "accuracy": accuracy, "seconds": seconds}
        log(f"  mnist {label}: {accuracy:.2f}% in {seconds:.0f} s")
        shutil.rmtree(out_dir, ignore_errors=True)
    return runs


# -- the scaling model ----------------------------------------------------------------------------
def machine_compute_s(m) -> float:
    """One machine's compute per step of 128 images: 1 x 2, or 2 x 1 without communication."""
    return min(m["single_step_s"], m["step_s"]["no_comm"])


def ring_allreduce_s(nbytes, machines, bandwidth, latency, buckets):
    """Ring allreduce: 2(k-1) steps, each moving 1/k of the bytes over every link; one latency per
    step and bucket."""
    k = machines
    return 2 * (k - 1) / k * nbytes / bandwidth + 2 * (k - 1) * latency * buckets


def predict(m):
    """Per machine: this 2-core machine at a batch of 128 (weak scaling: the global batch grows
    with the machines), its compute the faster of the two measured set-ups. The buckets other
    than the last can be reduced under the backward still running after the first one starts (the
    window measured in the 2-rank job, scaled to that compute time); the last bucket starts when
    backward ends."""
    compute = machine_compute_s(m)
    window = m["overlap_window_s"] * compute / m["step_s"]["no_comm"]
    rows = []
    for net, (bandwidth, latency) in NETWORKS.items():
        for k in MACHINES:
            comm = ring_allreduce_s(m["grad_bytes"], k, bandwidth, latency, m["buckets"])
            last = ring_allreduce_s(m["bucket_bytes"][-1], k, bandwidth, latency, 1)
            exposed = max(last, comm - window) if m["buckets"] > 1 else comm
            step = compute + exposed
            rows.append({"network": net, "machines": k, "allreduce_s": comm, "exposed_s": exposed, "step_s": step,
                         "images_per_s": k * GLOBAL_BATCH / step, "efficiency": compute / step,
                         "efficiency_no_overlap": compute / (compute + comm)})
    return rows


# -- BENCHMARKS.md --------------------------------------------------------------------------------
def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def render(results) -> str:
    info, models = results["info"], results["models"]
    predictions = {name: predict(m) for name, m in models.items()}
    out = [
        "## Data-parallel training over MPI (`mpiexec -n N cnnkit train`)",
        "",
        f"Measured {results['date']} with `{results['command']}` in {results['seconds'] / 60:.1f} min "
        f"({results['rounds']} alternating launches of each configuration, {results['steps']} timed steps each, "
        f"medians). Machine: {info['cpu']}, {info['cores']} cores, shared with other work while measured (load "
        f"average {info['load_at_start']:.1f} at the start, {info['load_at_end']:.1f} at the end), so re-run on a "
        f"quiet machine before quoting absolute times; Python {info['python']}, NumPy "
        f"{info['numpy']}, mpi4py {info['mpi4py']}, {info['mpi']}.",
        "",
        "### 1 process x 2 threads vs 2 ranks x 1 thread, global batch 128",
        "",
        "The same training step (forward, cross-entropy, backward, SGD with momentum), random inputs of the "
        "dataset's shape. *1 x 2*: one process, cnnkit's thread pool and BLAS on both cores. *2 x 1*: "
        "`mpiexec -n 2`, each rank 64 images on one thread (cnnkit gives each rank cores / ranks threads), "
        "DistributedDataParallel averaging the gradients. Ratio: 2 x 1 throughput over 1 x 2 throughput.",
        "",
    ]
    rows = []
    for name, m in models.items():
        s, d = m["single_step_s"], m["step_s"]["ddp"]
        rows.append([name, f"{1e3 * s:.1f}", f"{GLOBAL_BATCH / s:.0f}", f"{1e3 * d:.1f}", f"{GLOBAL_BATCH / d:.0f}",
                     f"**{s / d:.2f}**"])
    out.append(table(["model", "1 x 2 step ms", "1 x 2 img/s", "2 x 1 DDP step ms", "2 x 1 img/s", "ratio"], rows))
    out += ["", "### Where the 2-rank step's time goes", "",
            "Interleaved step by step in one 2-rank job. *no communication*: each rank steps alone (the "
            "compute floor). *allreduce after backward*: backward under `no_sync`, then every bucket reduced "
            "at once (the whole communication on the critical path). *DDP*: buckets started while backward "
            "runs. *Allreduce alone*: the gradient buckets reduced with nothing else running, ranks in step. "
            "*After backward* and *DDP exposed*: what the slowest rank waited for the reductions after its "
            "backward (the other rank also waits for it to catch up); *hidden* = 1 - DDP exposed / after "
            "backward.", ""]
    rows = []
    for name, m in models.items():
        st, cm = m["step_s"], m["comm_s"]
        rows.append([name, f"{m['grad_bytes'] / 2**20:.2f} MB in {m['buckets']}", f"{1e3 * st['no_comm']:.1f}",
                     f"{1e3 * st['after_backward']:.1f}", f"{1e3 * st['ddp']:.1f}",
                     f"{1e3 * m['gradient_allreduce_s']:.2f}", f"{1e3 * cm['after_backward']:.2f}",
                     f"{1e3 * cm['ddp']:.2f}", f"{100 * m['hidden_fraction']:.0f}%"])
    out.append(table(["model", "gradients, buckets", "step, no communication ms", "step, allreduce after backward ms",
                      "step, DDP ms", "allreduce alone ms", "after backward: wait ms", "DDP exposed ms", "hidden"],
                     rows))
    anym = next(iter(models.values()))
    bw = anym["allreduce_bytes_per_s"]
    out += ["", f"Allreduce between the two ranks (shared memory, MPICH): {1e6 * anym['allreduce_latency_s']:.0f} µs "
            "for 8 bytes; " + ", ".join(f"{int(k) / 2**20:.0f} MB at {v / 1e9:.2f} GB/s" for k, v in bw.items()) + "."]
    if results.get("mnist"):
        out += ["", "### The MNIST recipe end to end", "",
                "`cnnkit train --dataset mnist` (LeNet-5, 8 epochs, batch 128) as a user types it, one process "
                "against `mpiexec -n 2` (each rank its shard of the data, 64 per step, SyncBatchNorm not needed: "
                "LeNet-5 has no BatchNorm). Wall time includes start-up, validation and the test evaluation. The "
                "two runs follow each other (minutes each, not interleaved), so on a shared machine their wall times "
                "carry the load of their own minutes: read the accuracy here and the speed in the interleaved tables "
                "above.", ""]
        rows = [[label, f"`{r['command'].strip()}`", f"{r['accuracy']:.2f}%", f"{r['seconds']:.0f} s"]
                for label, r in results["mnist"].items()]
        out.append(table(["run", "command", "test accuracy", "wall time"], rows))
    out += ["", "### A model for 2-64 machines", "", MODEL_TEXT, ""]
    for name, m in models.items():
        rows = []
        for r in predictions[name]:
            rows.append([r["network"], r["machines"], f"{1e3 * r['allreduce_s']:.2f}", f"{1e3 * r['exposed_s']:.2f}",
                         f"{1e3 * r['step_s']:.1f}", f"{r['images_per_s']:,.0f}", f"{100 * r['efficiency']:.1f}%",
                         f"{100 * r['efficiency_no_overlap']:.1f}%"])
        out += [f"**{name}** ({m['grad_bytes'] / 2**20:.2f} MB of float32 gradients in {m['buckets']} bucket(s), "
                f"the last {m['bucket_bytes'][-1] / 2**20:.2f} MB; compute {1e3 * machine_compute_s(m):.0f} ms per "
                f"machine and step; overlap window {1e3 * m['overlap_window_s']:.0f} ms measured at 2 x 1):", "",
                table(["network", "machines", "allreduce ms", "exposed ms", "step ms", "img/s", "efficiency",
                       "efficiency without overlap"], rows), ""]
    out.append(conclusions(models, predictions))
    return "\n".join(out) + "\n"


MODEL_TEXT = """Each machine is this 2-core box at a batch of 128 (weak scaling: the global batch is 128 x
machines, the usual data-parallel choice); its compute time per step is the faster of the two
measured set-ups (1 x 2, or 2 x 1 without communication). The gradients are averaged by a ring allreduce per bucket, which
moves 2(k-1)/k of the bucket's bytes over each machine's link in 2(k-1) steps, each paying the
network's latency:

    allreduce(k) = 2(k-1)/k x gradient bytes / bandwidth + 2(k-1) x latency x buckets
    exposed(k)   = max(allreduce of the last bucket, allreduce(k) - window)   (one bucket: allreduce(k))
    step(k)      = compute + exposed(k),  efficiency = compute / step(k),  throughput = k x 128 / step(k)

Bandwidth is 1.25 GB/s (10 Gbit/s) or 12.5 GB/s (100 Gbit/s); the latency per ring step is an
*assumption*, 25 µs for TCP over 10 Gbit Ethernet and 3 µs for RDMA at 100 Gbit/s (the
shared-memory latency measured here says nothing about a network). The window is the backward time
left after DDP started its first bucket, measured in the 2-rank job and scaled by the ratio of the
two step times; the last bucket is complete only when backward ends, so it is never hidden. The
last column is the prediction without overlap (exposed = allreduce)."""


def conclusions(models, predictions) -> str:
    """The reading of the model's tables, from their numbers."""
    parts = []
    for name, rows in predictions.items():
        m = models[name]
        at64 = {r["network"]: r for r in rows if r["machines"] == MACHINES[-1]}
        slow, fast = at64[next(iter(NETWORKS))], at64[list(NETWORKS)[-1]]
        bandwidth_share = 2 * (MACHINES[-1] - 1) / MACHINES[-1] * m["grad_bytes"] / NETWORKS[next(iter(NETWORKS))][0]
        parts.append(
            f"{name}: at {MACHINES[-1]} machines the allreduce takes {1e3 * slow['allreduce_s']:.1f} ms on "
            f"10 Gbit/s ({1e3 * bandwidth_share:.1f} ms of it moving bytes, the rest latency) against "
            f"{1e3 * machine_compute_s(m):.0f} ms of compute: {100 * slow['efficiency']:.1f}% efficiency "
            f"({100 * fast['efficiency']:.1f}% on 100 Gbit/s); overlap is worth "
            f"{100 * (slow['efficiency'] - slow['efficiency_no_overlap']):.1f} points on 10 Gbit/s.")
    worst = min(r["efficiency"] for rows in predictions.values() for r in rows)
    reading = (" On CPUs of this speed data parallelism stays compute-bound: a step's arithmetic dwarfs its "
               "gradient bytes." if worst > 0.9 else
               f" Communication limits the largest configurations (worst efficiency {100 * worst:.0f}%).")
    return ("What the model says. " + " ".join(parts) + reading + " What the model leaves out: stragglers "
            "(a synchronous step waits for the slowest machine), data loading, contention in the network, and the "
            "communication thread's share of the CPU. With a fixed global batch instead (strong scaling) each "
            "machine's share shrinks as 128/k while the allreduce stays the same, so communication grows k times "
            "more important.")


def machine_info() -> dict:
    import numpy

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "numpy": numpy.__version__,
            "load_at_start": os.getloadavg()[0]}
    try:
        import mpi4py

        info["mpi4py"] = mpi4py.__version__
        version = subprocess.run([sys.executable, "-c", "from mpi4py import MPI; print(MPI.Get_library_version())"],
                                 capture_output=True, text=True, timeout=60, env=_env()).stdout
        info["mpi"] = version.strip().splitlines()[0].strip() if version.strip() else "unknown MPI"
    except ImportError:
        info["mpi4py"] = "missing"
    return info


def write_section(path: Path, text: str) -> None:
    current = path.read_text() if path.exists() else "# cnnkit benchmarks\n"
    block = f"{BEGIN}\n{text}{END}"
    if BEGIN in current and END in current:
        head, rest = current.split(BEGIN, 1)
        new = head + block + rest.split(END, 1)[1]
    else:
        new = current.rstrip("\n") + "\n\n" + block + "\n"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(new)
    os.replace(tmp, path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="2 rounds of 3 steps, no MNIST run")
    p.add_argument("--rounds", type=int, help="alternating launches per configuration (default 3, --quick 2)")
    p.add_argument("--steps", type=int, help="timed steps per launch and variant (default 6, --quick 3)")
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"), help="for the MNIST run")
    p.add_argument("--output", default=str(ROOT / "BENCHMARKS.md"))
    p.add_argument("--no-write", action="store_true", help="print the section, do not touch BENCHMARKS.md")
    p.add_argument("--render", metavar="JSON", help="only rewrite BENCHMARKS.md from a saved results file")
    p.add_argument("--worker", nargs=4, metavar=("KIND", "MODEL", "STEPS", "WARMUP"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        kind, name, steps, warmup = args.worker
        (worker_single if kind == "single" else worker_ddp)(name, int(steps), int(warmup))
        return 0
    if args.render:
        write_section(Path(args.output), render(json.loads(Path(args.render).read_text())))
        return 0
    if _mpiexec() is None:
        print("no mpiexec: pip install 'cnnkit[mpi]' (mpi4py and mpich)", file=sys.stderr)
        return 1
    rounds = args.rounds or (2 if args.quick else 3)
    steps = args.steps or (3 if args.quick else 6)
    log = lambda *a: print(*a, flush=True)  # noqa: E731
    started = time.time()
    results = {"info": machine_info(), "rounds": rounds, "steps": steps}
    log(f"machine: {results['info']}")
    log("training steps, 1 process x 2 threads vs 2 ranks x 1 thread:")
    results["models"] = measure(rounds, steps, warmup=2, log=log)
    for m in results["models"].values():
        full, exposed = m["comm_s"]["after_backward"], m["comm_s"]["ddp"]
        m["hidden_fraction"] = max(0.0, min(1.0, 1 - exposed / full)) if full > 0 else 0.0
    if not args.quick and (Path(args.data_dir) / "mnist").is_dir():
        log("MNIST recipe end to end:")
        results["mnist"] = mnist_end_to_end(args.data_dir, log)
    results["seconds"] = time.time() - started
    results["info"]["load_at_end"] = os.getloadavg()[0]
    results["command"] = "python benchmarks/distributed.py" + (" --quick" if args.quick else "")
    results["date"] = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "distributed.json").write_text(json.dumps(results, indent=1))
    text = render(results)
    if args.no_write:
        print(text)
    else:
        write_section(Path(args.output), text)
        log(f"wrote {args.output} ({results['seconds'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
