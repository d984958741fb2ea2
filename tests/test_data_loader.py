"""DataLoader batching and reproducibility; the batched transforms against hand-computed results."""
import numpy as np
import pytest

from cnnkit.data import Dataset, DataLoader, load
from cnnkit.data.transforms import DATASET_STATS, Compose, Normalize, RandomCrop, RandomHorizontalFlip


def _toy(n=10, shape=(1, 2, 3)):
    images = (np.arange(n * int(np.prod(shape))) % 256).astype(np.uint8).reshape(n, *shape)
    return Dataset(images, np.arange(n) % 3, ["a", "b", "c"], name="toy")


def _labels_per_epoch(loader):
    return np.concatenate([y for _, y in loader])


# ----------------------------------------------------------------------------- DataLoader
def test_batches_dtypes_scaling_and_len():
    ds = _toy(10)
    loader = DataLoader(ds, batch_size=4)
    batches = list(loader)
    assert len(loader) == 3 and [len(y) for _, y in batches] == [4, 4, 2]
    x, y = batches[0]
    assert x.dtype == np.float32 and x.shape == (4, 1, 2, 3) and y.dtype == np.int64
    np.testing.assert_allclose(x, ds.images[:4] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(np.concatenate([y for _, y in batches]), ds.labels)  # unshuffled: in order
    dropping = DataLoader(ds, batch_size=4, drop_last=True)
    assert len(dropping) == 2 and [len(y) for _, y in dropping] == [4, 4]
    assert len(DataLoader(ds, batch_size=5, drop_last=True)) == 2
    x64, _ = next(iter(DataLoader(ds, batch_size=2, dtype=np.float64)))
    assert x64.dtype == np.float64


def test_shuffling_is_a_permutation_reproducible_from_the_seed():
    ids = Dataset(np.arange(50, dtype=np.uint8).reshape(50, 1, 1, 1), np.zeros(50, int), ["x"], name="ids")
    a = DataLoader(ids, batch_size=8, shuffle=True, seed=7)
    b = DataLoader(ids, batch_size=8, shuffle=True, seed=7)
    order_a1 = np.concatenate([np.rint(x.ravel() * 255) for x, _ in a]).astype(int)
    order_b1 = np.concatenate([np.rint(x.ravel() * 255) for x, _ in b]).astype(int)
    order_a2 = np.concatenate([np.rint(x.ravel() * 255) for x, _ in a]).astype(int)
    assert sorted(order_a1) == list(range(50))  # every sample once per epoch
    np.testing.assert_array_equal(order_a1, order_b1)  # same seed, same order
    assert not np.array_equal(order_a1, order_a2)  # a new order each epoch
    c = DataLoader(ids, batch_size=8, shuffle=True, seed=8)
    assert not np.array_equal(order_a1, np.concatenate([np.rint(x.ravel() * 255) for x, _ in c]).astype(int))
    # drop_last with shuffling drops a different tail each epoch but always full batches
    d = DataLoader(ids, batch_size=8, shuffle=True, drop_last=True, seed=0)
    assert [len(y) for _, y in d] == [8] * 6


def test_state_dict_resumes_the_same_sequence():
    ds = _toy(20)
    transform = RandomHorizontalFlip(0.5)
    loader = DataLoader(ds, batch_size=6, shuffle=True, transform=transform, seed=3)
    list(loader)  # epoch 1
    state = loader.state_dict()
    expected = [(x.copy(), y.copy()) for x, y in loader]  # epoch 2
    resumed = DataLoader(ds, batch_size=6, shuffle=True, transform=transform, seed=999)
    resumed.load_state_dict(state)
    for (x1, y1), (x2, y2) in zip(expected, resumed):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    gen = np.random.default_rng(3)
    assert DataLoader(ds, generator=gen).generator is gen


def test_transform_gets_the_loaders_generator():
    seen = []

    def spy(x, generator):
        seen.append(generator)
        return x * 2

    loader = DataLoader(_toy(4), batch_size=2, transform=spy, seed=0)
    x, _ = next(iter(loader))
    assert seen[0] is loader.generator
    np.testing.assert_allclose(x, 2 * _toy(4).images[:2] / 255, rtol=1e-6)


def test_loader_argument_errors():
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        DataLoader(_toy(), batch_size=0)
    with pytest.raises(TypeError, match="images and labels"):
        DataLoader([1, 2, 3])
    with pytest.raises(ValueError, match="not both"):
        DataLoader(_toy(), seed=1, generator=np.random.default_rng(1))
    with pytest.raises(TypeError, match="callable"):
        DataLoader(_toy(), transform="flip")


def test_loader_on_real_cifar_subset_with_augmentation(shared_data):
    ds = load("cifar10", "test", root=shared_data, download=False)
    transform = Compose([RandomCrop(32, padding=4), RandomHorizontalFlip(), Normalize.for_dataset("cifar10")])
    loader = DataLoader(ds, batch_size=128, shuffle=True, transform=transform, seed=0)
    batches = list(loader)
    assert len(batches) == len(loader) == 8
    x, y = batches[0]
    assert x.shape == (128, 3, 32, 32) and x.dtype == np.float32 and y.dtype == np.int64
    assert sorted(np.concatenate([y for _, y in batches]).tolist()) == sorted(ds.labels.tolist())


# ----------------------------------------------------------------------------- transforms
def _hand_crop(x, size, padding, generator):
    n, _, height, width = x.shape
    h, w = size
    padded = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    top = generator.integers(0, height + 2 * padding - h + 1, size=n)
    left = generator.integers(0, width + 2 * padding - w + 1, size=n)
    out = np.empty((n, x.shape[1], h, w), x.dtype)
    for i in range(n):
        out[i] = padded[i, :, top[i]:top[i] + h, left[i]:left[i] + w]
    return out


@pytest.mark.parametrize("size, padding, shape", [(32, 4, (16, 3, 32, 32)), ((3, 5), 0, (6, 2, 7, 6)),
                                                  ((4, 2), 2, (5, 1, 3, 3))])
def test_random_crop_equals_hand_computed_crop(size, padding, shape):
    x = np.random.default_rng(0).random(shape).astype(np.float32)
    before = x.copy()
    y = RandomCrop(size, padding=padding)(x, np.random.default_rng(11))
    expected = _hand_crop(x, (size, size) if isinstance(size, int) else size, padding, np.random.default_rng(11))
    np.testing.assert_array_equal(y, expected)
    np.testing.assert_array_equal(x, before)  # the input is not modified
    assert y.dtype == x.dtype


def test_random_crop_with_padding_keeps_shape_and_pads_with_zeros():
    x = np.ones((200, 1, 4, 4))
    y = RandomCrop(4, padding=2)(x, np.random.default_rng(0))
    assert y.shape == x.shape and y.dtype == np.float64
    assert y.min() == 0.0 and y.max() == 1.0
    assert (y == 1).all(axis=(1, 2, 3)).any()  # some crops hit the centre exactly
    with pytest.raises(ValueError, match="larger than the padded image"):
        RandomCrop(9, padding=2)(x, np.random.default_rng(0))
    with pytest.raises(ValueError, match="padding must be a non-negative integer, got -1"):
        RandomCrop(4, padding=-1)


def test_horizontal_flip():
    x = np.random.default_rng(0).random((32, 2, 3, 4)).astype(np.float32)
    np.testing.assert_array_equal(RandomHorizontalFlip(1.0)(x, np.random.default_rng(0)), x[..., ::-1])
    np.testing.assert_array_equal(RandomHorizontalFlip(0.0)(x, np.random.default_rng(0)), x)
    y = RandomHorizontalFlip(0.5)(x, np.random.default_rng(5))
    flipped = np.random.default_rng(5).random(32) < 0.5
    assert 0 < flipped.sum() < 32
    np.testing.assert_array_equal(y[flipped], x[flipped][..., ::-1])
    np.testing.assert_array_equal(y[~flipped], x[~flipped])
    with pytest.raises(ValueError, match="p must lie in"):
        RandomHorizontalFlip(1.5)


def test_normalize():
    x = np.random.default_rng(0).random((4, 3, 2, 2)).astype(np.float32)
    norm = Normalize((0.1, 0.2, 0.3), (0.5, 0.25, 2.0))
    y = norm(x)
    expected = (x - np.array([0.1, 0.2, 0.3]).reshape(1, 3, 1, 1)) / np.array([0.5, 0.25, 2.0]).reshape(1, 3, 1, 1)
    np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-6)
    assert y.dtype == np.float32
    cifar = Normalize.for_dataset("cifar10")
    assert cifar.mean == (0.4914, 0.4822, 0.4465) and cifar.std == (0.2470, 0.2435, 0.2616)
    assert Normalize.for_dataset("mnist").mean == (0.1307,)
    assert Normalize.for_dataset("fashion-mnist").std == (0.3530,)
    with pytest.raises(ValueError, match="3 channel statistics but the batch has 1"):
        norm(x[:, :1])
    with pytest.raises(ValueError, match="no standard statistics"):
        Normalize.for_dataset("imagenet-21k")
    with pytest.raises(ValueError, match="floating batch"):
        norm(x.astype(np.uint8))


def test_digits_statistics_match_the_training_split():
    train = load("digits", "train").images / 255.0
    mean, std = DATASET_STATS["digits"]
    assert abs(train.mean() - mean[0]) < 5e-5 and abs(train.std() - std[0]) < 5e-5


def test_compose_applies_in_order_with_one_generator():
    x = np.ones((2, 1, 2, 2), np.float32)
    t = Compose([lambda x, g: x + 1, lambda x, g: x * 3, Normalize((1.0,), (2.0,))])
    np.testing.assert_allclose(t(x, np.random.default_rng(0)), np.full_like(x, 2.5))
    assert "Normalize" in repr(t)
