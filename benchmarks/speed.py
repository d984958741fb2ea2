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
                   help="comma-separated sections to run: layers, ops, models, memory (default: all)")
    p.add_argument("--repeat", type=int, help="interleaved rounds per measurement (default 7, --quick 3)")
    p.add_argument("--output", default=os.path.join(ROOT, "BENCHMARKS.md"), help="the Markdown file to update")
    p.add_argument("--no-write", action="store_true", help="print the tables, do not touch BENCHMARKS.md")
    p.add_argument("--render", metavar="JSON", help="only rewrite BENCHMARKS.md from a saved results file")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.render:
        with open(args.render) as f:
            write_section(args.output, render(json.load(f)))
        return 0
    sections = {s.strip() for s in args.only.split(",") if s.strip()}
    repeat = args.repeat or (3 if args.quick else 7)
    torch = common.setup_threads()
    started = time.time()
    info = common.machine_info(torch)
    info["sgemm_gflops"] = common.measure_sgemm()
    log = lambda *a: print(*a, flush=True)  # noqa: E731
    log(f"machine: {info}")
    results = {"info": info, "quick": args.quick, "repeat": repeat}
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
        f" --only {args.only}" if sections != {"layers", "ops", "models", "memory"} else "")
    results["date"] = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")

    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(os.path.join(HERE, "results", "speed.json"), "w") as f:
        json.dump(results, f, indent=1)
    text = render(results)
    if args.no_write:
        print(text)
    else:
        write_section(args.output, text)
        log(f"wrote {args.output} ({results['seconds']:.0f} s)")
    return 0


NOTES = """### How cnnkit's convolution gets its speed, and what was measured

* **Algorithms** (`Conv2d(..., algorithm="auto" | "im2col" | "flat")`, `last_algorithm` says which ran;
  `cnnkit.functional.conv.set_benchmark(True)` times both once per shape, like cuDNN's benchmark mode).
  `im2col` is the textbook reference: per-image columns `(N, C*kh*kw, P)` and a batched GEMM. `flat`
  (`cnnkit/functional/conv_flat.py`) lays the padded input out channel-major over the whole batch, split
  into stride phases, so that each im2col row is *one contiguous slice* (C*kh*kw memcpy's instead of
  N*C*kh*kw*out_h short row copies) and the layer is one large GEMM; it computes the seam positions of the
  padded grid too (1.13x the work at 32x32, 1.56x at 8x8) and drops them. `auto` takes `flat` for
  `groups=1` and >= 8 input channels, `im2col` otherwise (first layers: 1-3 channels).
* **Kept**: the weight-gradient GEMM as `(cols @ dY^T)^T` — OpenBLAS ran `dY @ cols^T` (long inner
  dimension, 16x144 result) up to 9x slower (334 ms vs 36 ms, F=16, K=144, L=148k); this one change took
  the ResNet-20 training step from 12x to 5x PyTorch's time. Reused buffers (`functional/workspace.py`):
  a fresh 75 MB column array cost 58 ms against 22 ms for the same copy into a reused one (first-touch
  page faults). im2col/col2im/layout copies are cut into channel chunks on a thread pool
  (`functional/parallel.py`; NumPy releases the GIL in copies and adds).
* **Cache-sized chunks, one BLAS thread each** (`conv_flat.tap_gemm`): the flat kernel never builds the
  whole column matrix; ~1 MB chunks of columns are gathered and multiplied while in L2, the chunks spread
  over the cores by the thread pool with OpenBLAS limited to one thread (`threadpoolctl`). An earlier try
  at chunking was 1.5-3x *slower* because OpenBLAS split every small GEMM over its own threads again (8 ms
  of hand-offs per 2 MFLOP chunk on this busy machine); on one thread per chunk, ResNet-20's training step
  went from 3.4 s to 1.7 s and inference from 1.3 s to 0.6 s (interleaved runs, load ~4). Stride-1 `dx` is
  the same kind of flat convolution of the zero-margined `dY` with the mirrored taps (no col2im adds).
* **Memory**: a convolution keeps its *input* (the array the ReLU before it keeps anyway), not its padded
  copy or its columns; backward rebuilds the phase buffer. Shared scratch buffers are one arena per name
  (sized by the largest layer, not one per shape). ResNet-20 b128 step peak: 735 MB -> 274 MB.
* **BatchNorm**: per-channel constants broadcast as contiguous `(C, H*W)` rows (NumPy's stride-0 inner
  loop was 2-3x slower), the cache holds `x - mean` (one pass less), eval mode is one affine pass.
* **Inference fusion** (`cnnkit.nn.fuse.fuse(model, input_shape)`): BatchNorm folded into the conv's
  weight and bias, a following ReLU applied in place on the conv's output; the row "inference, fused".
* **Not done (yet)**: Winograd F(2x2,3x3) (2.25x fewer multiplications, but in NumPy its transforms are
  extra full passes over 4x the input); FFT for 11x11; pooling fast paths.
* **What stands in the way**: PyTorch runs oneDNN direct convolutions (no columns, blocked layouts, JIT
  AVX-512 kernels); for 16-64 channels a NumPy im2col conv writes and reads 9x the input and runs a GEMM
  with M = 16-64 rows, which OpenBLAS executes at 20-40% of its square-matrix rate. The machine these
  figures come from was shared with other jobs (load average 5-7 on 2 cores), which slows every
  multithreaded call by scheduling waits; absolute times are several times the idle machine's.
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
                "GFLOP/s over forward + backward (3x the forward's 2·N·F·C·kh·kw·out_h·out_w); "
                "% sgemm: that rate over a 1024x1024 sgemm timed in the same interleaved rounds.", ""]
        rows = []
        for r in results["conv"]:
            rows.append([r["group"], r["name"], r["shape"], r["algorithm"],
                         fmt_ms(r["cnnkit_fwd"]), fmt_ms(r["torch_fwd"]), f"**{fmt_ratio(r['cnnkit_fwd'], r['torch_fwd'])}**",
                         fmt_ms(r["cnnkit_bwd"]), fmt_ms(r["torch_bwd"]), f"**{fmt_ratio(r['cnnkit_bwd'], r['torch_bwd'])}**",
                         f"{r['cnnkit_gflops']:.0f} ({100 * r['cnnkit_gflops'] / r['sgemm_gflops']:.0f}%)",
                         f"{r['torch_gflops']:.0f} ({100 * r['torch_gflops'] / r['sgemm_gflops']:.0f}%)"])
        out.append(markdown_table(["net", "layer", "input -> filters", "cnnkit algorithm",
                                   "fwd cnnkit ms", "fwd PyTorch ms", "fwd ratio",
                                   "bwd cnnkit ms", "bwd PyTorch ms", "bwd ratio",
                                   "cnnkit GFLOP/s (% sgemm)", "PyTorch GFLOP/s (% sgemm)"], rows))
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
