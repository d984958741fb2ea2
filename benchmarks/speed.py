"""cnnkit vs PyTorch on CPU, side by side: per layer, end to end, and training memory.

One command runs it all and rewrites the speed section of ``BENCHMARKS.md`` (only the text between
``<!-- speed:begin -->`` and ``<!-- speed:end -->``; other sections are left as they are)::

    python benchmarks/speed.py            # full run (~15-30 minutes on 2 cores)
    python benchmarks/speed.py --quick    # a subset with fewer repetitions (~3-5 minutes)

Both frameworks use the same number of threads (``CNNKIT_BENCH_THREADS``, default 2), the same
shapes, weights and inputs, and run interleaved in one process; every figure is a median of
several repetitions, and the ratio column is cnnkit's time divided by PyTorch's (< 1: cnnkit is
faster). Raw results also go to ``benchmarks/results/speed.json``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)

import common  # noqa: E402  (sets the BLAS thread variables before NumPy loads)
from common import fmt_ms, fmt_ratio, markdown_table  # noqa: E402

BEGIN, END = "<!-- speed:begin -->", "<!-- speed:end -->"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a subset of the layers and models, fewer repetitions")
    p.add_argument("--only", default="layers,ops,models,memory",
                   help="comma-separated sections to run: layers, ops, models, memory, layouts "
                        "(default: all but layouts)")
    p.add_argument("--repeat", type=int, help="interleaved rounds per measurement (default 7, --quick 3)")
    p.add_argument("--output", default=os.path.join(ROOT, "BENCHMARKS.md"), help="the Markdown file to update")
    p.add_argument("--no-write", action="store_true", help="print the tables, do not touch BENCHMARKS.md or benchmarks/results/speed.json")
    p.add_argument("--render", metavar="JSON", help="only rewrite BENCHMARKS.md from a saved results file")
    p.add_argument("--backend", choices=("auto", "numpy", "onednn"),
                   help="cnnkit's kernel backend (default: CNNKIT_BACKEND, else auto: oneDNN where installed)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.render:
        with open(args.render) as f:
            write_section(args.output, render(json.load(f)))
        return 0
    sections = {s.strip() for s in args.only.split(",") if s.strip()}
    repeat = args.repeat or (3 if args.quick else 7)
    if args.backend:
        os.environ["CNNKIT_BACKEND"] = args.backend  # also for the memory runs' child processes
        from cnnkit import backend

        backend.set_backend(args.backend)
    torch = common.setup_threads()
    started = time.time()
    info = common.machine_info(torch)
    info["sgemm_gflops"] = common.measure_sgemm()
    log = lambda *a: print(*a, flush=True)  # noqa: E731
    log(f"machine: {info}")
    results = {"info": info, "quick": args.quick, "repeat": repeat}
    if "layouts" in sections:
        import layers

        log("activation layouts (oneDNN), whole training steps:")
        results["layouts"] = layers.run_layouts(torch, args.quick, repeat, log)
    if "layers" in sections:
        import layers

        log("convolution layers (forward / backward, ratio cnnkit/torch):")
        results["conv"] = layers.run_conv(torch, args.quick, repeat, log)
    if "ops" in sections:
        import layers

        log("pooling, batch norm, linear:")
        results["ops"] = layers.run_ops(torch, args.quick, repeat, log)
    if "models" in sections:
        import end_to_end

        log("end to end:")
        results["models"] = end_to_end.run(torch, args.quick, repeat, log)
    if "memory" in sections:
        import memory

        log("peak training memory (separate processes):")
        results["memory"] = memory.run(args.quick, log)
    results["seconds"] = time.time() - started
    results["command"] = "python benchmarks/speed.py" + (" --quick" if args.quick else "") + (
        f" --only {args.only}" if sections != {"layers", "ops", "models", "memory"} else "") + (
        f" --backend {args.backend}" if args.backend else "")
    results["date"] = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")

    text = render(results)
    if args.no_write:
        print(text)
    else:  # the raw results go with the tables they produced, so `--render` rebuilds exactly these
        os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
        with open(os.path.join(HERE, "results", "speed.json"), "w") as f:
            json.dump(results, f, indent=1)
        write_section(args.output, text)
        log(f"wrote {args.output} ({results['seconds']:.0f} s)")
    return 0


NOTES = """### Where the speed comes from: the oneDNN backend

* **What runs** (`cnnkit/functional/onednn/`, `cnnkit info`): with `cnnkit[onednn]` installed, every
  float32 convolution, max/average pooling, batch norm, ReLU, LRN, linear layer and residual sum is one
  oneDNN primitive (oneDNN 3.2, JIT AVX-512 kernels, the library PyTorch calls), reached through ctypes.
  The NumPy kernels stay the reference and the fallback: float64, NaN inputs, oneDNN's few differences
  from PyTorch (max pooling of NaN or all `-inf` windows, ceil-mode average windows past the padding,
  even LRN sizes) and tiny element-wise calls run on them, decided per call by the kernel registry.
* **Layout**: between oneDNN layers activations are `(N, C, H, W)` NumPy arrays with channels-last
  (NHWC) memory: the brgconv kernels read and write it directly, so no layer copies its input or output.
  NCHW arrays with a reorder into and out of every convolution cost 1.1-1.8x more per training step (the
  table "Activation layouts" above: ResNet-20 b128 245 ms channels-last, 421 ms NCHW with nhwc
  reorders, 439 ms NCHW with blocked reorders, of which 53-58 ms are the reorders themselves; the rest
  is oneDNN's slower NCHW kernels for batch norm, pooling and element-wise ops). Blocked `nChw16c`
  activations kept between layers could save at most those reorders, their convolutions measured no
  faster than brgconv on nhwc, and they are not an array a user can hold. Only the network's input (NCHW
  from the user) is reordered once, and the weights, which are small, on each call.
* **Threads**: oneDNN's OpenMP threads (`CNNKIT_NUM_THREADS`, else every core) run the primitives one at a
  time; cnnkit's own pool and OpenBLAS are idle meanwhile. Calls under 8M multiply-adds (convolutions) or
  1 MB (everything else) run on one thread, cnnkit's rule for its own threads; batch norm always does,
  because its statistics meet at spin barriers that stalled for a whole time slice whenever another
  process held a core (0.5-0.9 ms on one thread, 24-84 ms on two, on this shared machine). Idle OpenMP
  workers sleep at once (`OMP_WAIT_POLICY=PASSIVE` unless the user set a policy), so they take no core
  from the NumPy work that follows or from other processes.
* **Fewer passes over memory**: in training, a BatchNorm2d followed by a ReLU in a chain runs as one
  oneDNN op (normalisation + ReLU, the ReLU's mask kept as one bit per value), and a residual block's
  `relu(body + shortcut)` is one binary add with a ReLU post-op; its two input gradients are summed by the
  same add op on every core. Inference-fused models (`cnnkit.nn.fuse`) run the ReLU as a convolution
  post-op. Linear layers use oneDNN's matmul on the weight's transpose as a strided view (no copy), and
  NumPy's one BLAS call below 16M multiply-adds, where it was faster.
* **NaN stays NaN**: oneDNN's ReLU (and every ReLU post-op) turns NaN into 0, PyTorch keeps it; so a ReLU
  or fused ReLU whose inputs hold NaN runs on NumPy instead, found by a `min` (and, before a convolution
  post-op, a `max`) over the input, or for free from batch statistics. Those checks cost a few percent of
  an inference step (about 3 ms of a fused ResNet-20's 65-80 ms).
* **Primitives are cached** per shape, layout and option: a new shape costs a JIT compile (0.3-3 ms;
  `cnnkit profile` reports them), later calls only point the memory objects at the arrays (a few
  microseconds through ctypes). Scratchpads are user-managed NumPy buffers (one shared arena), so
  `tracemalloc` and `cnnkit summary` see every byte: the summary's estimate is within 10% of the measured
  peak on the oneDNN path (tests/test_onednn_models.py).
* **Exactness**: every oneDNN kernel is tested against the float64 NumPy reference and PyTorch, forward
  and every gradient, on the odd geometries of the NumPy tests, in both layouts. A whole ResNet-20
  training step in float32 agrees with the float64 reference to ~1e-6 relative, as PyTorch does.
* **Fair timing**: same threads for both frameworks; `OMP_WAIT_POLICY=PASSIVE` (PyTorch's best case on a
  shared machine, and the same libgomp serves both). Each timed call is the second of two back to back
  (steady state, as in a training loop: on this virtual machine an idle core took milliseconds to wake,
  which added ~10 ms to every call of both frameworks after the settle pause), and is followed by an
  untimed pause. glibc keeps freed memory for the next step once oneDNN is in use (`keep_freed_memory`),
  in the same process, so for both frameworks. The machine is shared with other engineers' jobs: these
  tables come from a quiet moment (load average below 1), but the lead re-runs them on a quiet machine.

### The NumPy kernels (`CNNKIT_BACKEND=numpy`), as measured before the oneDNN backend


* **Algorithms** (`Conv2d(..., algorithm="auto" | "im2col" | "flat")`, `last_algorithm` says which ran;
  `cnnkit.functional.conv.set_benchmark(True)` times both once per shape, like cuDNN's benchmark mode).
  `im2col` is the textbook reference: per-image columns `(N, C*kh*kw, P)` and a batched GEMM. `flat`
  (`cnnkit/functional/conv_flat.py`) lays the padded input out channel-major over the whole batch, split
  into stride phases, so that each im2col row is *one contiguous slice* of it and the layer is one GEMM
  over all images. `auto` takes `flat` for `groups=1` and >= 6 input channels (LeNet-5 conv2, 6 -> 16:
  20.4 -> 14.7 ms forward + backward), `im2col` for the 1-3 channel first layers of small images.
* **Seams**: the flat GEMM also computes the positions between images and rows and drops them. At
  stride 1 neighbouring rows and images now share their zero padding (a read past a row's right edge
  lands in the next row's left padding), so the waste is 1.06x / 1.13x / 1.27x at 32 / 16 / 8 px instead
  of 1.13x / 1.27x / 1.56x.
* **Cache-sized chunks, one BLAS thread each** (`conv_flat._over_column_chunks`): the column matrix is
  never built; ~1 MB chunks are gathered and multiplied while in L2, the chunks spread over the cores by
  cnnkit's thread pool with OpenBLAS on one thread. A chunk is gathered by one strided copy per stride
  phase (NumPy `as_strided` views of the phase buffer) instead of one copy per kernel tap: each NumPy call
  is microseconds of Python that the threads take turns at under the GIL (ResNet-20's 16-channel layer,
  forward + backward: 48.6 -> 36.1 ms). Chunks have at least 8 columns per weight row (up to 1024),
  because OpenBLAS packs the weight again for every chunk, and their count is a multiple of the thread
  count (VGG 512-channel forward GEMM 90 -> 53 ms, against 49 ms for one 2-thread GEMM of the whole
  column matrix).
* **Backward**: phase by phase, `dx` is itself a flat convolution of `dY` with that phase's taps
  mirrored (no column matrix, no col2im adds), and `dW[f, c, t] = sum_p dY[f, p - off_t] X[c, p]`
  multiplies the *same* gathered columns of `dY` by the input's phase buffer
  (`conv_flat.tap_gemm_and_correlate`): one gather serves both gradients (ResNet-20 layers 13-27% faster,
  strided layers 1.3-1.5x). Layers with fewer than 8 input channels, where that `dx` GEMM would have only
  C rows, use `dcols = W^T @ dY` and col2im instead (AlexNet conv1's full backward: 259 -> 116 ms).
* **Every GEMM on one BLAS thread per core** (`functional.parallel.threaded_matmul`): after a
  multi-threaded call, OpenBLAS's workers busy-wait on the cores for a while; the BatchNorm that followed
  took 14 ms instead of 7 ms. So cnnkit splits every large GEMM itself (batch, rows or columns) over its
  thread pool, and the element-wise passes get both cores: BatchNorm over batch slices (128x16x32x32
  forward + backward 20.8 -> 11.8 ms), ReLU over flat slices (6.4 -> 4.5 ms), pooling over 2 MB blocks
  of planes (ResNet-18 stem max pool backward 166 -> 61 ms; 2x2/2 windows write `dx` per offset without a
  scatter; under `no_grad` max pooling computes no switches).
* **Kept from before**: the weight gradient as `(cols @ dY^T)^T` where whole columns exist (OpenBLAS ran
  `dY @ cols^T` up to 9x slower); reused scratch buffers (a fresh 75 MB array cost 58 ms of page faults
  against 22 ms for the same copy into a reused one); layout copies on the thread pool.
* **Memory**: a convolution keeps its *input* (the array the ReLU before it keeps anyway), not its padded
  copy or its columns; backward rebuilds the phase buffer. Shared scratch buffers are one arena per name
  (sized by the largest layer, not one per shape).
* **Inference fusion** (`cnnkit.nn.fuse.fuse(model, input_shape)`): BatchNorm folded into the conv's
  weight and bias, a following ReLU applied in place on the conv's output; the row "inference, fused".
* **Tried and dropped** (measured, interleaved): threads taking chunks from a shared counter instead of
  fixed ranges (30% slower: per-chunk Python overhead); batched small GEMMs to reach OpenBLAS's
  small-matrix kernels (no gain); keeping OpenBLAS on one thread for a whole module call instead of per
  GEMM (no difference, 1.00x); BatchNorm in cache-sized channel blocks (slower at ResNet-20 sizes); plain
  Numba loops for a direct convolution (18-116 ms against the flat kernel's 12 ms and PyTorch's 5 ms for
  a ResNet-20 layer's forward: only register-blocked kernels would pay, and they are not the readable
  code cnnkit is for); Winograd F(2x2,3x3) (2.25x fewer multiplications, but its transforms are extra
  NumPy passes over 4x the input and its GEMMs have K = C = 16-64, where OpenBLAS is slowest).
* **How the timing is kept fair**: each timed call is followed by an untimed pause (30 ms; 0.25 s after
  the 2-thread sgemm reference), because PyTorch's OpenMP workers and OpenBLAS's workers busy-wait on
  the cores after a parallel call and slowed whichever framework ran next (cnnkit's 16-channel
  convolution: 15 ms alone, 21 ms right after a PyTorch call, 23-29 ms within 0.1 s of a 2-thread
  sgemm). Before this, cnnkit's own multi-threaded GEMMs also slowed the PyTorch runs that followed
  them, which flattered the earlier ratios (LeNet-5's PyTorch step measured 25 ms then, 16 ms now).
* **What stands in the way**: PyTorch runs oneDNN direct convolutions (no columns, blocked layouts, JIT
  AVX-512 kernels). For 16-64 channels a NumPy convolution must still gather 9x its input and run GEMMs
  with 16-64 rows, which single-threaded OpenBLAS executes at 40-60 GFLOP/s against 110 for square
  matrices (it repacks both operands for every call); and every NumPy call costs microseconds of Python,
  serialised by the GIL between the two threads. The machine is shared: absolute times move by 1.5x
  between runs, so only the ratios from interleaved runs are comparable.
"""


def render(results: dict) -> str:
    info = results["info"]
    out = [
        "## Speed: cnnkit vs PyTorch on CPU",
        "",
        f"Measured {results['date']} with `{results['command']}` in {results['seconds'] / 60:.1f} min "
        f"({'quick subset, ' if results['quick'] else ''}{results['repeat']} interleaved rounds or more, medians).",
        f"Machine: {info['cpu']}, {info['cores']} cores, {info['threads']} threads for both frameworks; "
        f"Python {info['python']}, NumPy {info['numpy']} ({info['blas']}), PyTorch {info['torch']}, "
        f"cnnkit {info['cnnkit']}. Square float32 sgemm through NumPy: {info['sgemm_gflops']:.0f} GFLOP/s "
        "at the start of the run.",
        "",
        f"cnnkit's kernels: **{info.get('kernels', 'NumPy')}** (backend `{info.get('backend', 'numpy')}`; "
        "`cnnkit info` says which is active and why).",
        "",
        "Ratio = cnnkit time / PyTorch time (below 1: cnnkit is faster). The machine is shared, so "
        "absolute times vary from run to run; the ratios come from interleaved runs in one process.",
    ]
    if results.get("models"):
        out += ["", "### Training step and inference", "",
                "Training step: forward (training mode), cross-entropy, backward without the input gradient, "
                "SGD (momentum 0.9, weight decay 5e-4). Inference: eval mode under `no_grad`.", ""]
        rows = [[r["model"], r["batch"], r["input"], r["mode"], fmt_ms(r["cnnkit"]), fmt_ms(r["torch"]),
                 f"**{fmt_ratio(r['cnnkit'], r['torch'])}**"] for r in results["models"]]
        out.append(markdown_table(["model", "batch", "input", "", "cnnkit ms", "PyTorch ms", "ratio"], rows))
    if results.get("layouts"):
        out += ["", "### Activation layouts (oneDNN), whole training steps", "",
                "The same training step with oneDNN handing on channels-last arrays, or C-ordered (NCHW) "
                "arrays that each convolution reorders to and from its kernel's layout (nhwc, or oneDNN's "
                "blocked choice). *Reorders* is the time oneDNN spent in them; a step minus its reorders "
                "bounds what blocked activations kept between layers could reach.", ""]
        rows = [[r["model"], r["batch"], r["mode"], fmt_ms(r["cnnkit"]), fmt_ms(r["reorder_seconds"]),
                 fmt_ms(r["cnnkit"] - r["reorder_seconds"]), fmt_ms(r["torch"]), f"**{fmt_ratio(r['cnnkit'], r['torch'])}**"]
                for r in results["layouts"]]
        out.append(markdown_table(["model", "batch", "activations", "step ms", "reorders ms", "step - reorders ms",
                                   "PyTorch ms", "ratio"], rows))
    if results.get("memory"):
        out += ["", "### Peak memory of a training step", "",
                "Each framework in its own process: resident-set high-water mark during three training "
                "steps minus the resident set before them (model, optimizer and batch already built).", ""]
        rows = []
        for r in results["memory"]:
            c, t = r["cnnkit"], r["torch"]
            rows.append([r["model"], r["batch"], f"{c['step_peak_mb']:.0f}", f"{t['step_peak_mb']:.0f}",
                         f"**{fmt_ratio(c['step_peak_mb'], t['step_peak_mb'])}**",
                         f"{c['peak_mb']:.0f} / {t['peak_mb']:.0f}"])
        out.append(markdown_table(["model", "batch", "cnnkit MB", "PyTorch MB", "ratio",
                                   "whole process peak MB (cnnkit / PyTorch)"], rows))
    if results.get("conv"):
        out += ["", "### Convolution layers", "",
                "Forward in training mode; backward computes the input, weight (and bias) gradients. "
                "GFLOP/s: forward 2·N·F·C·kh·kw·out_h·out_w, backward twice that; "
                "% sgemm: that rate over a 1024x1024 sgemm timed in the same interleaved rounds.", ""]
        rows = []
        for r in results["conv"]:
            def rate(fwd_key, bwd_key):
                if fwd_key not in r:  # results saved before the split into forward and backward
                    return "", ""
                return tuple(f"{r[k]:.0f} ({100 * r[k] / r['sgemm_gflops']:.0f}%)" for k in (fwd_key, bwd_key))

            ck_fwd, ck_bwd = rate("cnnkit_fwd_gflops", "cnnkit_bwd_gflops")
            pt_fwd, pt_bwd = rate("torch_fwd_gflops", "torch_bwd_gflops")
            rows.append([r["group"], r["name"], r["shape"], r["algorithm"],
                         fmt_ms(r["cnnkit_fwd"]), fmt_ms(r["torch_fwd"]), f"**{fmt_ratio(r['cnnkit_fwd'], r['torch_fwd'])}**",
                         fmt_ms(r["cnnkit_bwd"]), fmt_ms(r["torch_bwd"]), f"**{fmt_ratio(r['cnnkit_bwd'], r['torch_bwd'])}**",
                         ck_fwd, ck_bwd, pt_fwd, pt_bwd])
        out.append(markdown_table(["net", "layer", "input -> filters", "cnnkit algorithm",
                                   "fwd cnnkit ms", "fwd PyTorch ms", "fwd ratio",
                                   "bwd cnnkit ms", "bwd PyTorch ms", "bwd ratio",
                                   "cnnkit fwd GFLOP/s (% sgemm)", "cnnkit bwd GFLOP/s (% sgemm)",
                                   "PyTorch fwd GFLOP/s (% sgemm)", "PyTorch bwd GFLOP/s (% sgemm)"], rows))
    if results.get("ops"):
        out += ["", "### Pooling, batch normalisation, linear", "",
                "Training-mode forward; backward with the input and parameter gradients.", ""]
        rows = [[r["kind"], r["name"], r["shape"], fmt_ms(r["cnnkit_fwd"]), fmt_ms(r["torch_fwd"]),
                 f"**{fmt_ratio(r['cnnkit_fwd'], r['torch_fwd'])}**", fmt_ms(r["cnnkit_bwd"]), fmt_ms(r["torch_bwd"]),
                 f"**{fmt_ratio(r['cnnkit_bwd'], r['torch_bwd'])}**"] for r in results["ops"]]
        out.append(markdown_table(["layer", "case", "input", "fwd cnnkit ms", "fwd PyTorch ms", "fwd ratio",
                                   "bwd cnnkit ms", "bwd PyTorch ms", "bwd ratio"], rows))
    out += ["", NOTES.rstrip("\n")]
    return "\n".join(out) + "\n"


def write_section(path: str, text: str) -> None:
    """Replace the text between the speed markers in ``path`` (append the section if absent)."""
    block = f"{BEGIN}\n{text}{END}"
    if os.path.exists(path):
        with open(path) as f:
            current = f.read()
    else:
        current = "# cnnkit benchmarks\n"
    if BEGIN in current and END in current:
        head, rest = current.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        new = head + block + tail
    else:
        new = current.rstrip("\n") + "\n\n" + block + "\n"
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(new)
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
