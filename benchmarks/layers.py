"""Per-layer benchmark: cnnkit's layers against PyTorch's on the same shapes, weights and threads.

Each row times the forward pass (training mode, caching what backward needs in both frameworks)
and the backward pass (input gradient and every parameter gradient) of one layer, interleaving
cnnkit and PyTorch and a reference sgemm in the same rounds. Convolution rows also give each
framework's GFLOP/s and its percentage of the sgemm rate measured in those same rounds.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from common import BLAS_SETTLE_SECONDS, interleaved

SGEMM_N = 1024  # the reference GEMM timed alongside every conv row


@dataclass
class ConvCase:
    group: str
    name: str
    batch: int
    in_channels: int
    out_channels: int
    size: int  # square input
    kernel: int
    stride: int = 1
    padding: int = 0
    bias: bool = False
    quick: bool = True  # part of --quick


def conv_cases() -> list[ConvCase]:
    c = ConvCase
    return [
        c("LeNet-5", "conv1 5x5", 128, 1, 6, 28, 5, 1, 2, bias=True),
        c("LeNet-5", "conv2 5x5", 128, 6, 16, 14, 5, 1, 0, bias=True),
        c("ResNet-20", "stem 3x3 3->16", 128, 3, 16, 32, 3, 1, 1),
        c("ResNet-20", "3x3 16 @32", 128, 16, 16, 32, 3, 1, 1),
        c("ResNet-20", "3x3/2 16->32", 128, 16, 32, 32, 3, 2, 1, quick=False),
        c("ResNet-20", "3x3 32 @16", 128, 32, 32, 16, 3, 1, 1),
        c("ResNet-20", "3x3/2 32->64", 128, 32, 64, 16, 3, 2, 1, quick=False),
        c("ResNet-20", "3x3 64 @8", 128, 64, 64, 8, 3, 1, 1),
        c("ResNet-18", "stem 7x7/2", 16, 3, 64, 224, 7, 2, 3),
        c("ResNet-18", "3x3 64 @56", 16, 64, 64, 56, 3, 1, 1),
        c("ResNet-18", "3x3 128 @28", 16, 128, 128, 28, 3, 1, 1, quick=False),
        c("ResNet-18", "3x3 256 @14", 16, 256, 256, 14, 3, 1, 1, quick=False),
        c("ResNet-18", "3x3 512 @7", 16, 512, 512, 7, 3, 1, 1),
        c("VGG", "3x3 3->64 @224", 2, 3, 64, 224, 3, 1, 1, bias=True, quick=False),
        c("VGG", "3x3 64 @224", 2, 64, 64, 224, 3, 1, 1, bias=True, quick=False),
        c("VGG", "3x3 128 @112", 2, 128, 128, 112, 3, 1, 1, bias=True),
        c("VGG", "3x3 256 @56", 2, 256, 256, 56, 3, 1, 1, bias=True, quick=False),
        c("VGG", "3x3 512 @28", 2, 512, 512, 28, 3, 1, 1, bias=True),
        c("VGG", "3x3 512 @14", 2, 512, 512, 14, 3, 1, 1, bias=True, quick=False),
        c("AlexNet", "conv1 11x11/4", 16, 3, 64, 224, 11, 4, 2, bias=True),
        c("1x1", "1x1 256->64 @56", 8, 256, 64, 56, 1),
        c("1x1", "1x1 64->256 @56", 8, 64, 256, 56, 1, quick=False),
        c("1x1", "1x1/2 64->128 @56", 16, 64, 128, 56, 1, 2),
        c("1x1", "1x1 512->128 @28", 8, 512, 128, 28, 1, quick=False),
    ]


def conv_flops(case: ConvCase, out_size: int) -> float:
    """Forward FLOPs (2 per multiply-add); backward (input + weight gradients) is twice that."""
    return 2.0 * case.batch * case.out_channels * case.in_channels * case.kernel**2 * out_size**2


def algorithm_of(layer) -> str:
    """The algorithm cnnkit's layer ran last (``last_algorithm``), else its setting, else im2col."""
    return str(getattr(layer, "last_algorithm", None) or getattr(layer, "algorithm", None) or "im2col")


def _torch_tensor(torch, array, requires_grad=False):
    t = torch.from_numpy(np.ascontiguousarray(array))
    return t.requires_grad_(requires_grad)


def _sgemm_candidate():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((SGEMM_N, SGEMM_N), dtype=np.float32)
    out = np.empty_like(a)
    return (lambda s: np.matmul(a, a, out=out)), 2.0 * SGEMM_N**3


def in_network_layout(x):
    """``x`` as cnnkit's layers receive it inside a network: channels-last 4-D arrays when the
    oneDNN kernels are active (each oneDNN op hands on that layout), C order otherwise. PyTorch
    gets its own default, C-ordered (contiguous) tensors."""
    from cnnkit import backend

    if x.ndim != 4 or backend.active_backend()[0] != "onednn":
        return x
    from cnnkit.functional.onednn.layout import empty_channels_last

    out = empty_channels_last(x.shape, x.dtype)
    out[...] = x
    return out


def bench_forward_backward(torch, layer, torch_fn, torch_params, x, repeat, extra=None):
    """Median forward and backward seconds of a cnnkit layer and a torch function, interleaved.

    ``torch_fn(xt)`` computes the torch output; ``torch_params`` are its leaf tensors (gradients
    reset before every backward, as ``zero_grad(set_to_none=True)`` does). ``extra`` adds more
    candidates (e.g. the sgemm reference) to both rounds.
    """
    xt = _torch_tensor(torch, x, requires_grad=True)
    x = in_network_layout(x)
    y = layer(x)
    dy = np.empty_like(y)  # the memory order of y: what the next layer hands back
    dy[...] = np.random.default_rng(2).standard_normal(y.shape).astype(x.dtype)
    dyt = torch.from_numpy(np.ascontiguousarray(dy))

    def ck_forward(_):
        layer(x)

    def tc_forward(_):
        torch_fn(xt)

    def ck_setup():
        layer.zero_grad()
        layer(x)

    def ck_backward(_):
        layer.backward(dy)

    def tc_setup():
        for p in torch_params:
            p.grad = None
        xt.grad = None
        return torch_fn(xt)

    def tc_backward(out):
        out.backward(dyt)

    extra = extra or {}
    settle = {name: BLAS_SETTLE_SECONDS for name in extra}  # the sgemm reference: 2-thread OpenBLAS
    fwd = interleaved({"cnnkit": ck_forward, "torch": tc_forward, **extra}, repeat=repeat, min_seconds=0.3,
                      settle=settle)
    layer._cache = None
    bwd = interleaved({"cnnkit": (ck_setup, ck_backward), "torch": (tc_setup, tc_backward), **extra},
                      repeat=repeat, min_seconds=0.3, settle=settle)
    return fwd, bwd


def run_conv(torch, quick: bool, repeat: int, log=print) -> list[dict]:
    from cnnkit.functional.shapes import conv_output_size
    from cnnkit.nn.conv import Conv2d

    F = torch.nn.functional
    rows = []
    sgemm_run, sgemm_flops = _sgemm_candidate()
    for case in conv_cases():
        if quick and not case.quick:
            continue
        rng = np.random.default_rng(0)
        layer = Conv2d(case.in_channels, case.out_channels, case.kernel, case.stride, case.padding,
                       bias=case.bias, generator=rng, check_geometry=False)
        x = rng.standard_normal((case.batch, case.in_channels, case.size, case.size), dtype=np.float32)
        wt = _torch_tensor(torch, layer.weight.data, requires_grad=True)
        bt = _torch_tensor(torch, layer.bias.data, requires_grad=True) if case.bias else None
        params = [wt] + ([bt] if case.bias else [])

        def torch_fn(xt, wt=wt, bt=bt, case=case):
            return F.conv2d(xt, wt, bt, case.stride, case.padding)

        check = np.abs(layer(x) - torch_fn(_torch_tensor(torch, x)).detach().numpy()).max()
        fwd, bwd = bench_forward_backward(torch, layer, torch_fn, params, x, repeat,
                                          extra={"sgemm": sgemm_run})
        out = conv_output_size(case.size, case.kernel, case.stride, case.padding, check_geometry=False)
        flops = conv_flops(case, out)
        sgemm_rate = sgemm_flops / min(fwd["sgemm"], bwd["sgemm"]) / 1e9
        row = dict(
            cnnkit_fwd_gflops=flops / fwd["cnnkit"] / 1e9, cnnkit_bwd_gflops=2 * flops / bwd["cnnkit"] / 1e9,
            torch_fwd_gflops=flops / fwd["torch"] / 1e9, torch_bwd_gflops=2 * flops / bwd["torch"] / 1e9,
            group=case.group, name=case.name, batch=case.batch, algorithm=algorithm_of(layer),
            shape=f"{case.batch}x{case.in_channels}x{case.size}x{case.size} -> {case.out_channels}",
            forward_flops=flops, max_abs_diff=float(check),
            cnnkit_fwd=fwd["cnnkit"], torch_fwd=fwd["torch"], cnnkit_bwd=bwd["cnnkit"], torch_bwd=bwd["torch"],
            sgemm_gflops=sgemm_rate,
            cnnkit_gflops=3 * flops / (fwd["cnnkit"] + bwd["cnnkit"]) / 1e9,
            torch_gflops=3 * flops / (fwd["torch"] + bwd["torch"]) / 1e9,
        )
        rows.append(row)
        log(f"  conv {case.group:9s} {case.name:20s} fwd {row['cnnkit_fwd'] / row['torch_fwd']:.2f}x "
            f"bwd {row['cnnkit_bwd'] / row['torch_bwd']:.2f}x  [{row['algorithm']}] "
            f"{row['cnnkit_gflops']:.0f} vs {row['torch_gflops']:.0f} GFLOP/s (sgemm {sgemm_rate:.0f})")
    return rows


@dataclass
class OpCase:
    kind: str
    name: str
    shape: tuple
    make: object = field(repr=False)  # (rng) -> (cnnkit layer, torch fn, torch params)
    quick: bool = True


def op_cases(torch) -> list[OpCase]:
    from cnnkit.nn.linear import Linear
    from cnnkit.nn.normalization import BatchNorm2d

    F = torch.nn.functional

    def maxpool(k, s, p):
        def make(rng):
            from cnnkit.nn.pooling import MaxPool2d

            return MaxPool2d(k, s, p), (lambda xt: F.max_pool2d(xt, k, s, p)), []
        return make

    def avgpool(k, s, p):
        def make(rng):
            from cnnkit.nn.pooling import AvgPool2d

            return AvgPool2d(k, s, p), (lambda xt: F.avg_pool2d(xt, k, s, p)), []
        return make

    def global_avgpool():
        def make(rng):
            from cnnkit.nn.pooling import AdaptiveAvgPool2d

            return AdaptiveAvgPool2d((1, 1)), (lambda xt: F.adaptive_avg_pool2d(xt, (1, 1))), []
        return make

    def batchnorm(c):
        def make(rng):
            layer = BatchNorm2d(c)
            w = torch.ones(c, requires_grad=True)
            b = torch.zeros(c, requires_grad=True)
            rm, rv = torch.zeros(c), torch.ones(c)
            return layer, (lambda xt: F.batch_norm(xt, rm, rv, w, b, training=True)), [w, b]
        return make

    def relu():
        def make(rng):
            from cnnkit.nn.activation import ReLU

            return ReLU(), F.relu, []
        return make

    def lrn(size):
        def make(rng):
            from cnnkit.nn.normalization import LocalResponseNorm

            return LocalResponseNorm(size, 1e-4, 0.75, 2.0), (lambda xt: F.local_response_norm(xt, size, 1e-4, 0.75, 2.0)), []
        return make

    def linear(i, o):
        def make(rng):
            layer = Linear(i, o, generator=rng)
            w = _torch_tensor(torch, layer.weight.data, True)
            b = _torch_tensor(torch, layer.bias.data, True)
            return layer, (lambda xt: F.linear(xt, w, b)), [w, b]
        return make

    return [
        OpCase("MaxPool2d", "2x2/2 (LeNet-5)", (128, 6, 28, 28), maxpool(2, 2, 0)),
        OpCase("MaxPool2d", "3x3/2 pad 1 (ResNet-18 stem)", (16, 64, 112, 112), maxpool(3, 2, 1)),
        OpCase("MaxPool2d", "2x2/2 (VGG)", (2, 128, 112, 112), maxpool(2, 2, 0), quick=False),
        OpCase("AvgPool2d", "2x2/2", (128, 16, 32, 32), avgpool(2, 2, 0)),
        OpCase("AvgPool2d", "3x3/1 pad 1", (16, 64, 56, 56), avgpool(3, 1, 1), quick=False),
        OpCase("AdaptiveAvgPool2d", "global (ResNet-20)", (128, 64, 8, 8), global_avgpool()),
        OpCase("BatchNorm2d", "16 @32 (ResNet-20)", (128, 16, 32, 32), batchnorm(16)),
        OpCase("BatchNorm2d", "64 @8 (ResNet-20)", (128, 64, 8, 8), batchnorm(64), quick=False),
        OpCase("BatchNorm2d", "64 @112 (ResNet-18)", (16, 64, 112, 112), batchnorm(64)),
        OpCase("ReLU", "16 @32 (ResNet-20)", (128, 16, 32, 32), relu()),
        OpCase("LocalResponseNorm", "size 5 (AlexNet)", (16, 64, 27, 27), lrn(5), quick=False),
        OpCase("Linear", "400->120 (LeNet-5)", (128, 400), linear(400, 120)),
        OpCase("Linear", "512->1000 (ResNet-18)", (16, 512), linear(512, 1000)),
        OpCase("Linear", "4096->4096 (AlexNet/VGG)", (64, 4096), linear(4096, 4096), quick=False),
    ]


def run_ops(torch, quick: bool, repeat: int, log=print) -> list[dict]:
    rows = []
    for case in op_cases(torch):
        if quick and not case.quick:
            continue
        rng = np.random.default_rng(0)
        try:
            layer, torch_fn, params = case.make(rng)
        except ImportError as exc:  # a layer family not merged yet
            log(f"  skip {case.kind} {case.name}: {exc}")
            continue
        x = rng.standard_normal(case.shape, dtype=np.float32)
        check = np.abs(layer(x) - torch_fn(_torch_tensor(torch, x)).detach().numpy()).max()
        fwd, bwd = bench_forward_backward(torch, layer, torch_fn, params, x, repeat)
        row = dict(kind=case.kind, name=case.name, shape="x".join(map(str, case.shape)), max_abs_diff=float(check),
                   cnnkit_fwd=fwd["cnnkit"], torch_fwd=fwd["torch"], cnnkit_bwd=bwd["cnnkit"], torch_bwd=bwd["torch"])
        rows.append(row)
        log(f"  {case.kind:17s} {case.name:28s} fwd {row['cnnkit_fwd'] / row['torch_fwd']:.2f}x "
            f"bwd {row['cnnkit_bwd'] / row['torch_bwd']:.2f}x")
    return rows


# -- activation layouts ----------------------------------------------------------------------------
LAYOUT_MODES = {
    # name: (CNNKIT_ONEDNN_LAYOUT, CNNKIT_ONEDNN_COMPUTE)
    "channels-last": ("channels_last", "nhwc"),
    "NCHW, reorders to nhwc": ("nchw", "nhwc"),
    "NCHW, reorders to blocked": ("nchw", "any"),
}


def run_layouts(torch, quick: bool, repeat: int, log=print) -> list[dict]:
    """Whole training steps with oneDNN under each activation layout, interleaved with PyTorch.

    ``channels-last``: every oneDNN op hands on an (N, C, H, W) array in NHWC memory (no copies
    between layers). ``NCHW, reorders to ...``: every op hands on C-ordered arrays and each
    convolution reorders its input, output and gradients to the layout its kernel wants (nhwc for
    brgconv, or oneDNN's choice ``any``: blocked nChw16c for the jit kernels), as PyTorch does for
    contiguous tensors. For each mode the oneDNN time per primitive kind is recorded too: the
    step minus its reorders is what keeping activations *blocked* between layers could save at
    best (a blocked array is not an ndarray of shape (N, C, H, W), so users could not hold it).
    """
    import os

    from cnnkit.functional.onednn import runtime
    from end_to_end import ModelCase, build_pair, inputs, training_step_fns

    cases = [ModelCase("lenet5", 128, (1, 28, 28), {}), ModelCase("resnet20", 128, (3, 32, 32), {})]
    rows = []
    saved = {k: os.environ.get(k) for k in ("CNNKIT_ONEDNN_LAYOUT", "CNNKIT_ONEDNN_COMPUTE")}
    try:
        for case in cases:
            model, twin = build_pair(torch, case)
            x, labels = inputs(case)
            step, tstep = training_step_fns(torch, model, twin, x, labels)
            kinds = {}

            def mode_step(layout, compute, name):
                def run(_=None):
                    os.environ["CNNKIT_ONEDNN_LAYOUT"], os.environ["CNNKIT_ONEDNN_COMPUTE"] = layout, compute
                    before = runtime.stats()["seconds_by_kind"]
                    step()
                    after = runtime.stats()["seconds_by_kind"]
                    spent = kinds.setdefault(name, [])
                    spent.append({k: after[k] - before.get(k, 0.0) for k in after})
                return run

            candidates = {name: mode_step(*mode, name) for name, mode in LAYOUT_MODES.items()}
            candidates["torch"] = tstep
            times = interleaved(candidates, repeat=max(3, repeat // 2), warmup=1, min_seconds=2.0)
            for name in LAYOUT_MODES:
                per_kind = {k: float(np.median([d.get(k, 0.0) for d in kinds[name]])) for k in kinds[name][-1]}
                reorders = per_kind.get("reorder", 0.0)
                rows.append(dict(model=case.model, batch=case.batch, mode=name, cnnkit=times[name],
                                 torch=times["torch"], reorder_seconds=reorders,
                                 conv_seconds=sum(v for k, v in per_kind.items() if k.startswith("conv"))))
                log(f"  {case.model:9s} {name:26s} {times[name] * 1e3:8.1f} ms (reorders {reorders * 1e3:6.1f} ms)  "
                    f"torch {times['torch'] * 1e3:8.1f} ms  ratio {times[name] / times['torch']:.2f}")
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return rows
