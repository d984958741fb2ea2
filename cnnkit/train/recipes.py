"""Default training recipes per dataset: what ``cnnkit train --dataset NAME`` does unless told otherwise.

The notes' recipe: mini-batch SGD with momentum 0.9, L2 weight decay, a learning rate that drops when
validation accuracy stalls (here: cosine or step schedules, or ``plateau``), He initialisation,
data augmentation for natural images.
"""
from __future__ import annotations

RECIPES = {
    # The main job: seconds on 2 cores, >= 97% test accuracy.
    "digits": dict(model="digitnet", epochs=10, batch_size=32, lr=0.05, optimizer="sgd", momentum=0.9,
                   weight_decay=5e-4, schedule="cosine", augment=False),
    # LeNet-5 (LeCun et al. 1998 report 99.05% on MNIST).
    "mnist": dict(model="lenet5", epochs=8, batch_size=128, lr=0.05, optimizer="sgd", momentum=0.9,
                  weight_decay=5e-4, schedule="cosine", augment=False),
    "fashion-mnist": dict(model="lenet5", epochs=10, batch_size=128, lr=0.05, optimizer="sgd", momentum=0.9,
                          weight_decay=5e-4, schedule="cosine", augment=False),
    # He et al. 2015, section 4.2: SGD 0.1, momentum 0.9, wd 1e-4, batch 128, crop+flip augmentation.
    "cifar10": dict(model="resnet20", epochs=30, batch_size=128, lr=0.1, optimizer="sgd", momentum=0.9,
                    weight_decay=1e-4, schedule="cosine", augment=True),
}


def recipe(dataset: str) -> dict:
    if dataset not in RECIPES:
        raise ValueError(f"no training recipe for dataset {dataset!r}; known: {', '.join(RECIPES)}")
    return dict(RECIPES[dataset])
