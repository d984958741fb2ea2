"""The design search behind the fast CIFAR-10 recipe (issue 15): quick variants of an airbench-style
network and its training, on a 1,000-image hold-out of the CIFAR-10 subset's training images (the
test images are left for the recipe's final figures).

    python benchmarks/recipe_search.py --data-dir ../shared/data --epochs 15 --lr 0.8 --head avg --ema 0.99

It trains in its own short loop, so that variants the command line does not offer (classifier head,
schedule shape, widths) are one flag each: the network is FastNet's layout (cnnkit/models/fastnet.py:
a frozen 2x2 PCA-whitening layer with 24 channels, then three groups conv-pool-BN-ReLU-conv-BN-ReLU,
a global pool and a bias-free linear layer), built here from cnnkit layers; SGD (Nesterov), a
one-cycle schedule stepped per batch (linear warm-up over ``--pct`` of the steps, linear decay, no
momentum cycling; ``--cli-onecycle 1``: `cnnkit train --schedule onecycle`'s cosine with momentum
cycling), label smoothing, crops (zero padding ``--pad``) and flips (random or alternating epochs).
It prints one JSON line per epoch and a final ``RESULT`` line: hold-out accuracy of the last weights
(``acc``), with flip TTA (``acc_tta``), and of the EMA weights (``ema_acc``, ``ema_acc_tta``) when
``--ema`` is given; ``--log FILE`` appends the RESULT line with the command to FILE
(``benchmarks/results/recipe_search.jsonl`` holds the runs BENCHMARKS.md quotes). Timings here are
not comparable between runs: the searches ran while the machine was shared.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import cnnkit
from cnnkit import nn, no_grad
from cnnkit.optim import SGD, param_groups_no_decay
from cnnkit.optim.lr_scheduler import OneCycleLR
from cnnkit.data.transforms import Normalize, RandomCrop
from cnnkit.models.fastnet import whitening_filters

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
p.add_argument("--log", help="append the RESULT line (with the command) to this JSON-lines file")
p.add_argument("--model", default="air")
p.add_argument("--widths", default="32,64,128")
p.add_argument("--whiten", default="pca")  # pca | learned
p.add_argument("--whiten-bias", type=int, default=1)
p.add_argument("--epochs", type=int, default=10)
p.add_argument("--bs", type=int, default=256)
p.add_argument("--lr", type=float, default=0.2)
p.add_argument("--mom", type=float, default=0.9)
p.add_argument("--nesterov", type=int, default=1)
p.add_argument("--wd", type=float, default=5e-4)
p.add_argument("--ls", type=float, default=0.2)
p.add_argument("--ema", type=float, default=0)
p.add_argument("--flip", default="random")
p.add_argument("--pad", type=int, default=2)
p.add_argument("--pct", type=float, default=0.25)
p.add_argument("--anneal", default="linear")
p.add_argument("--cli-onecycle", type=int, default=0)
p.add_argument("--head", default="max")
p.add_argument("--scale", type=float, default=1.0)
p.add_argument("--bnw", type=int, default=1)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--holdout", type=int, default=1000)
p.add_argument("--evalevery", type=int, default=0)
a = p.parse_args()
T0 = time.perf_counter()
tr = cnnkit.data.load("cifar10", "train", root=a.data_dir)
te = cnnkit.data.load("cifar10", "test", root=a.data_dir)
norm = Normalize.for_dataset("cifar10")
X = norm(tr.images.astype(np.float32) / 255); Y = tr.labels
if a.holdout:
    order = np.random.default_rng(1234).permutation(len(X))
    Xv, Yv = X[order[:a.holdout]], Y[order[:a.holdout]]; X, Y = X[order[a.holdout:]], Y[order[a.holdout:]]
else:
    Xv, Yv = norm(te.images.astype(np.float32) / 255), te.labels
g = np.random.default_rng(a.seed)

class Mul(nn.Module):
    def __init__(self, s): super().__init__(); self.s = s
    def forward(self, x): return x * self.s
    def backward(self, dy, input_grad=True): return dy * self.s
    def output_shape(self, s): return s

def bn(c):
    b = nn.BatchNorm2d(c)
    if not a.bnw: b.weight.requires_grad = False
    return b

def block(cin, cout):
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False, generator=g), nn.MaxPool2d(2, check_geometry=False),
            bn(cout), nn.ReLU(),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False, generator=g), bn(cout), nn.ReLU()]

if a.model == "air":
    widths = [int(w) for w in a.widths.split(",")]
    whiten = nn.Conv2d(3, 24, 2, bias=bool(a.whiten_bias), generator=g)
    layers = [whiten, nn.ReLU()]
    c = 24
    for w in widths:
        layers += block(c, w); c = w
    layers += [nn.MaxPool2d(3, check_geometry=False) if a.head == "max" else nn.AdaptiveAvgPool2d((1, 1)),
               nn.Flatten(), nn.Linear(c, 10, bias=False, generator=g)]
    if a.scale != 1: layers.append(Mul(a.scale))
    model = nn.Sequential(*layers)
    if a.whiten == "pca":
        whiten.weight.data[...] = whitening_filters(X[:5000])  # FastNet's, from 5,000 images
        whiten.weight.requires_grad = False
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m is not whiten:
            cnnkit.nn.init.kaiming_normal_(m.weight, nonlinearity="relu", generator=g)
else:
    model = cnnkit.models.create(a.model, seed=a.seed)

params = [q for q in model.parameters() if q.requires_grad]
groups = param_groups_no_decay(model, a.wd)
for gr in groups: gr["params"] = [q for q in gr["params"] if q.requires_grad]
opt = SGD(groups, lr=a.lr, momentum=a.mom, nesterov=bool(a.nesterov), weight_decay=a.wd)
steps = int(np.ceil(len(X) / a.bs))
sched = OneCycleLR(opt, max_lr=a.lr, epochs=a.epochs, steps_per_epoch=steps, pct_start=a.pct, anneal_strategy=a.anneal,
                   cycle_momentum=False) if not a.cli_onecycle else OneCycleLR(opt, max_lr=a.lr, epochs=a.epochs, steps_per_epoch=steps)
lossf = nn.CrossEntropyLoss(label_smoothing=a.ls)
crop = RandomCrop(32, padding=a.pad) if a.pad else None
ema = None
if a.ema:
    ema = {k: v.copy() for k, v in model.state_dict().items()}
flipbits = g.random(len(X)) < 0.5

def evaluate(tta):
    model.eval(); correct = 0
    with no_grad():
        for i in range(0, len(Xv), 500):
            xb = Xv[i:i+500]; out = model(xb)
            if tta: out = out + model(xb[:, :, :, ::-1].copy())
            correct += int((out.argmax(1) == Yv[i:i+500]).sum())
    model.train(); return correct / len(Xv)

step = 0; tl = 0.0; hist = []
Ttrain = time.perf_counter()
for ep in range(a.epochs):
    t = time.perf_counter(); order = g.permutation(len(X)); tot = 0; n = 0
    for i in range(0, len(X), a.bs):
        idx = order[i:i+a.bs]; xb = X[idx]
        if crop: xb = crop(xb, g)
        if a.flip == "random":
            f = np.flatnonzero(g.random(len(idx)) < 0.5); xb = xb.copy() if not crop else xb; xb[f] = xb[f, :, :, ::-1]
        elif a.flip == "alt":
            f = np.flatnonzero(flipbits[idx] ^ bool(ep % 2)); xb = xb.copy() if not crop else xb; xb[f] = xb[f, :, :, ::-1]
        out = model(xb); l = lossf(out, Y[idx]); opt.zero_grad(); model.backward(lossf.backward(), input_grad=False); opt.step(); sched.step()
        step += 1; tot += l * len(idx); n += len(idx)
        if ema is not None:
            d = min(a.ema, (1 + step) / (10 + step))
            for k, v in model.state_dict().items():
                if np.issubdtype(v.dtype, np.floating): ema[k] += (1 - d) * (v - ema[k])
                else: ema[k][...] = v
    dt = time.perf_counter() - t
    line = {"epoch": ep + 1, "loss": round(tot / n, 4), "s": round(dt, 1)}
    if a.evalevery and (ep + 1) % a.evalevery == 0 and ep + 1 < a.epochs:
        line["val"] = evaluate(False)
    print(json.dumps(line), flush=True)
train_s = time.perf_counter() - Ttrain
res = {"args": vars(a), "train_s": round(train_s, 1), "acc": evaluate(False), "acc_tta": evaluate(True)}
if ema is not None:
    live = {k: v.copy() for k, v in model.state_dict().items()}
    model.load_state_dict(ema)
    res["ema_acc"] = evaluate(False); res["ema_acc_tta"] = evaluate(True)
res["total_s"] = round(time.perf_counter() - T0, 1)
print("RESULT", json.dumps(res), flush=True)
if a.log:
    with open(a.log, "a") as f:
        f.write(json.dumps({"command": "python benchmarks/recipe_search.py " + " ".join(sys.argv[1:]), **res}) + "\n")
