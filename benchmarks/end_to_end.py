"""End-to-end benchmark: a full training step and inference of whole networks, cnnkit vs PyTorch.

The training step is what users run: forward in training mode, softmax cross-entropy, backward
without the input gradient (``input_grad=False``; in PyTorch the input has no ``requires_grad``),
and an SGD update with momentum 0.9 and weight decay 5e-4. Inference is an eval-mode forward under
``cnnkit.no_grad()`` / ``torch.no_grad()``. Both frameworks run the same weights (cnnkit's
``state_dict`` loaded into the plain-torch twin) and the benchmark checks their eval-mode logits
agree before timing anything.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common import interleaved
from torch_models import TORCH_MODELS, load_cnnkit_weights


@dataclass
class ModelCase:
    model: str
    batch: int
    input_shape: tuple
    kwargs: dict
    quick: bool = True
    repeat_scale: float = 1.0  # fewer rounds for slow models


def model_cases() -> list[ModelCase]:
    return [
        ModelCase("lenet5", 128, (1, 28, 28), {}),
        ModelCase("resnet20", 128, (3, 32, 32), {}),
        ModelCase("resnet18", 16, (3, 224, 224), {}, quick=False, repeat_scale=0.5),
    ]


def build_cnnkit(name: str, **kwargs):
    from cnnkit import models

    return models.create(name, seed=0, **kwargs)


def build_pair(torch, case: ModelCase):
    """The cnnkit model and its torch twin with the same weights; raises if their outputs differ."""
    model = build_cnnkit(case.model, **case.kwargs)
    twin = TORCH_MODELS[case.model]()
    missing = load_cnnkit_weights(twin, model)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing:
        raise RuntimeError(f"{case.model}: torch keys without cnnkit weights: {missing}")
    return model, twin


def check_agreement(torch, model, twin, x) -> float:
    """Max relative difference of eval-mode logits (float32); the models must be the same network."""
    import cnnkit

    model.eval()
    twin.eval()
    with cnnkit.no_grad():
        a = model(x)
    with torch.no_grad():
        b = twin(torch.from_numpy(x)).numpy()
    model.train()
    twin.train()
    return float(np.abs(a - b).max() / (np.abs(b).max() + 1e-12))


class _FallbackSGD:
    """SGD with momentum and weight decay in PyTorch's convention, used only until cnnkit.optim exists."""

    def __init__(self, params, lr, momentum, weight_decay):
        self.params, self.lr, self.momentum, self.weight_decay = list(params), lr, momentum, weight_decay
        self.velocity = [None] * len(self.params)

    def step(self):
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            g = p.grad + self.weight_decay * p.data
            if self.velocity[i] is None:
                self.velocity[i] = g.copy()
            else:
                self.velocity[i] *= self.momentum
                self.velocity[i] += g
            p.data -= self.lr * self.velocity[i]

    def zero_grad(self):
        for p in self.params:
            p.grad = None


def make_optimizers(torch, model, twin, lr=0.01):
    try:
        from cnnkit.optim import SGD
    except ImportError:
        SGD = _FallbackSGD

    return (SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4),
            torch.optim.SGD(twin.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4))


def training_step_fns(torch, model, twin, x, labels):
    """``(cnnkit_step, torch_step)``: one full training step each, as users write it."""
    from cnnkit.nn.loss import CrossEntropyLoss

    lossf = CrossEntropyLoss()
    opt, topt = make_optimizers(torch, model, twin)
    xt = torch.from_numpy(x)
    yt = torch.from_numpy(labels)

    def cnnkit_step(_=None):
        logits = model(x)
        lossf(logits, labels)
        model.backward(lossf.backward(), input_grad=False)
        opt.step()
        opt.zero_grad()

    def torch_step(_=None):
        topt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(twin(xt), yt)
        loss.backward()
        topt.step()

    return cnnkit_step, torch_step


def inference_fns(torch, model, twin, x):
    import cnnkit

    xt = torch.from_numpy(x)

    def cnnkit_infer(_=None):
        with cnnkit.no_grad():
            model(x)

    def torch_infer(_=None):
        with torch.no_grad():
            twin(xt)

    return cnnkit_infer, torch_infer


def inputs(case: ModelCase, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((case.batch,) + case.input_shape, dtype=np.float32)
    labels = rng.integers(0, 10 if case.model != "resnet18" else 1000, case.batch).astype(np.int64)
    return x, labels


def run(torch, quick: bool, repeat: int, log=print) -> list[dict]:
    rows = []
    for case in model_cases():
        if quick and not case.quick:
            continue
        model, twin = build_pair(torch, case)
        x, labels = inputs(case)
        diff = check_agreement(torch, model, twin, x)
        if diff > 1e-3:
            raise RuntimeError(f"{case.model}: cnnkit and torch logits differ (max relative {diff:.2e})")
        reps = max(3, int(round(repeat * case.repeat_scale)))
        step, tstep = training_step_fns(torch, model, twin, x, labels)
        train = interleaved({"cnnkit": step, "torch": tstep}, repeat=reps, warmup=1, min_seconds=2.0)
        model.eval()
        twin.eval()
        infer, tinfer = inference_fns(torch, model, twin, x)
        evals = interleaved({"cnnkit": infer, "torch": tinfer}, repeat=reps, warmup=1, min_seconds=1.0)
        # cnnkit.nn.fuse: BatchNorm folded into the convs, ReLUs into the convs (PyTorch unfused).
        from cnnkit.nn.fuse import fuse

        fused_infer, _ = inference_fns(torch, fuse(model, case.input_shape), twin, x)
        fused = interleaved({"cnnkit": fused_infer, "torch": tinfer}, repeat=reps, warmup=1, min_seconds=1.0)
        model.train()
        twin.train()
        for mode, t in (("training step", train), ("inference", evals), ("inference, fused", fused)):
            rows.append(dict(model=case.model, batch=case.batch, input="x".join(map(str, case.input_shape)),
                             mode=mode, cnnkit=t["cnnkit"], torch=t["torch"], logits_rel_diff=diff))
            log(f"  {case.model:9s} {mode:14s} cnnkit {t['cnnkit'] * 1e3:8.1f} ms  torch {t['torch'] * 1e3:8.1f} ms "
                f" ratio {t['cnnkit'] / t['torch']:.2f}")
    return rows
