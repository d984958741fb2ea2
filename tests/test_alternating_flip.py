"""Flips on alternating epochs (AlternatingHorizontalFlip): every image is seen both ways in every
two consecutive epochs, the choice follows the dataset index and the epoch (not the batch or the
shuffle), the DataLoader passes both and counts epochs, and the trainer sets the epoch."""
import numpy as np
import pytest

import cnnkit
from cnnkit.data import DataLoader
from cnnkit.data.transforms import AlternatingHorizontalFlip, Compose, Normalize, RandomCrop


class _Images:
    """A dataset whose image i is a ramp with value i in its left column (so flips are visible)."""

    def __init__(self, n=40):
        ramp = np.arange(4, dtype=np.uint8)[None, None, None, :]
        self.images = np.broadcast_to(ramp, (n, 1, 3, 4)).copy()
        self.images[:, 0, :, 0] = np.arange(n)[:, None] + 10
        self.labels = np.arange(n) % 10


def _flipped(x):
    """Which images of a loader batch are mirrored (their marker moved to the right column)."""
    return x[:, 0, 0, -1] * 255 > 9.5


def _flips_by_index(loader):
    seen = {}
    for x, y in loader:
        marker = np.where(_flipped(x), x[:, 0, 0, -1], x[:, 0, 0, 0]) * 255
        for index, flipped in zip(np.rint(marker).astype(int) - 10, _flipped(x)):
            seen[int(index)] = bool(flipped)
    return np.array([seen[i] for i in range(len(seen))])


def test_each_image_alternates_and_half_start_flipped():
    data = _Images(240)
    loader = DataLoader(data, 32, shuffle=True, transform=AlternatingHorizontalFlip(seed=3), seed=0)
    epochs = [_flips_by_index(loader) for _ in range(3)]
    assert loader.epoch == 3
    np.testing.assert_array_equal(epochs[1], ~epochs[0])
    np.testing.assert_array_equal(epochs[2], epochs[0])
    assert 0.4 < epochs[0].mean() < 0.6  # about half the images start mirrored
    other = DataLoader(data, 7, shuffle=False, transform=AlternatingHorizontalFlip(seed=3))
    np.testing.assert_array_equal(_flips_by_index(other), epochs[0])  # batch size and order do not matter
    reseeded = DataLoader(data, 32, transform=AlternatingHorizontalFlip(seed=4))
    assert not np.array_equal(_flips_by_index(reseeded), epochs[0])


def test_set_epoch_and_state_dict_carry_the_epoch():
    data = _Images()
    loader = DataLoader(data, 8, transform=AlternatingHorizontalFlip(), seed=0)
    first = _flips_by_index(loader)
    loader.set_epoch(5)
    np.testing.assert_array_equal(_flips_by_index(loader), ~first)
    state = loader.state_dict()
    assert state["epoch"] == 6
    fresh = DataLoader(data, 8, transform=AlternatingHorizontalFlip(), seed=0)
    fresh.load_state_dict(state)
    np.testing.assert_array_equal(_flips_by_index(fresh), first)  # epoch 6: even again
    fresh.load_state_dict({"generator": state["generator"]})  # an older checkpoint: epoch kept
    assert fresh.epoch == 7
    with pytest.raises(ValueError, match="epoch must be a non-negative integer, got -1"):
        loader.set_epoch(-1)


def test_compose_passes_indices_and_epoch_to_its_per_sample_members():
    data = _Images()
    composed = Compose([AlternatingHorizontalFlip(), Normalize(0.5, 0.5)])
    assert composed.per_sample and not Compose([Normalize(0.5, 0.5)]).per_sample
    plain = DataLoader(data, 8, transform=AlternatingHorizontalFlip())
    normalised = DataLoader(data, 8, transform=composed)
    for (a, _), (b, _) in zip(plain, normalised):
        np.testing.assert_allclose((a - 0.5) / 0.5, b, rtol=1e-6)
    crop = Compose([RandomCrop((3, 4), padding=1), AlternatingHorizontalFlip()])
    assert next(iter(DataLoader(data, 8, transform=crop, seed=0)))[0].shape == (8, 1, 3, 4)


def test_misuse_is_explained():
    flip = AlternatingHorizontalFlip()
    x = np.zeros((2, 1, 3, 4), np.float32)
    with pytest.raises(ValueError, match="needs each image's dataset index and the epoch"):
        flip(x, None)
    with pytest.raises(ValueError, match=r"2 images but indices of shape \(3,\)"):
        flip(x, None, indices=np.arange(3), epoch=0)
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        AlternatingHorizontalFlip(seed=-1)
    y = flip(x, None, indices=np.array([0, 1]), epoch=0)
    assert y is not x


def test_the_trainer_sets_the_loader_epoch():
    data = _Images(64)
    loader = DataLoader(data, 16, shuffle=True, transform=AlternatingHorizontalFlip(), seed=0)
    model = cnnkit.nn.Sequential(cnnkit.nn.Flatten(), cnnkit.nn.Linear(12, 10, generator=np.random.default_rng(0)))
    trainer = cnnkit.train.Trainer(model, cnnkit.optim.SGD(model.parameters(), lr=0.01), progress=False, out=None)
    trainer.epoch = 3  # as after resuming from epoch 3
    trainer.train_epoch(loader)
    assert loader.epoch == 4
