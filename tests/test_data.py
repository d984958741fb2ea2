"""Dataset loaders on the real files (shared copies), digits, the data root, ImageFolder."""
import numpy as np
import pytest
from PIL import Image

from cnnkit.data import Dataset, ImageFolder, data_root, list_datasets, load
from cnnkit.data.download import DatasetFormatError, DatasetNotFoundError

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def test_mnist_train_from_shared_copy(shared_data):
    ds = load("mnist", "train", root=shared_data, download=False)
    assert ds.images.shape == (60000, 1, 28, 28) and ds.images.dtype == np.uint8
    assert ds.labels.dtype == np.int64 and ds.labels.shape == (60000,)
    assert ds.labels[:5].tolist() == [5, 0, 4, 1, 9]
    assert np.bincount(ds.labels).tolist()[:2] == [5923, 6742]  # the published class counts
    assert ds.images.max() == 255 and ds.images.min() == 0
    assert ds.classes == [str(d) for d in range(10)]
    assert (ds.name, ds.split) == ("mnist", "train")
    assert ds.source == shared_data / "mnist"
    image, label = ds[0]
    assert image.shape == (1, 28, 28) and label == 5


def test_mnist_test_and_fashion_mnist(shared_data):
    test = load("mnist", "test", root=shared_data, download=False)
    assert test.images.shape == (10000, 1, 28, 28) and test.labels[:5].tolist() == [7, 2, 1, 0, 4]
    fashion = load("fashion-mnist", "test", root=shared_data, download=False)
    assert fashion.images.shape == (10000, 1, 28, 28)
    assert np.bincount(fashion.labels).tolist() == [1000] * 10
    assert fashion.labels[:3].tolist() == [9, 2, 1]
    assert fashion.classes[0] == "T-shirt/top" and fashion.classes[9] == "Ankle boot"


def test_cifar10_subset_is_found_and_read(shared_data):
    train = load("cifar10", "train", root=shared_data, download=False)
    test = load("cifar10", split="test", root=shared_data, download=False)
    assert train.images.shape == (8068, 3, 32, 32) and train.images.dtype == np.uint8
    assert test.images.shape == (1017, 3, 32, 32)
    assert train.classes == CIFAR_CLASSES == test.classes
    # The first official training images are a frog, two trucks, a deer, an automobile.
    assert train.labels[:5].tolist() == [6, 9, 9, 4, 1]
    assert test.labels[:4].tolist() == [3, 8, 8, 0]
    assert set(np.unique(train.labels)) == set(range(10))
    assert train.source == shared_data / "cifar10-subset" / "cifar-10-batches-py"


def test_cifar10_channels_are_planes_not_interleaved(shared_data):
    # data rows are 1024 red, 1024 green, 1024 blue: channel c of pixel (i, j) is row[c*1024 + i*32 + j]
    from cnnkit.data.cifar import read_batch, restricted_load

    folder = shared_data / "cifar10-subset" / "cifar-10-batches-py"
    raw = restricted_load(folder / "test_batch")[b"data"]
    images, _ = read_batch(folder / "test_batch")
    assert images[0, 1, 2, 3] == raw[0, 1024 + 2 * 32 + 3]
    assert images[5, 2, 31, 0] == raw[5, 2048 + 31 * 32]


def test_environment_variable_sets_the_root(shared_data, monkeypatch):
    monkeypatch.setenv("CNNKIT_DATA", str(shared_data))
    assert data_root() == shared_data
    assert len(load("mnist", "test", download=False)) == 10000
    monkeypatch.delenv("CNNKIT_DATA")
    monkeypatch.setenv("HOME", "/home/someone")
    assert str(data_root()) == "/home/someone/.cache/cnnkit"
    assert data_root("~/data") == data_root().parent.parent / "data"


def test_digits_fixed_stratified_split():
    train, test = load("digits", "train"), load("digits", "test")
    assert (len(train), len(test)) == (1438, 359)
    assert train.images.shape[1:] == (1, 8, 8) and train.images.dtype == np.uint8
    assert train.images.max() == 255  # 16 -> 255
    assert set(np.unique(train.images)) <= {round(v * 255 / 16) for v in range(17)}
    all_counts = np.bincount(train.labels) + np.bincount(test.labels)
    np.testing.assert_allclose(np.bincount(test.labels) / all_counts, 0.2, atol=0.005)
    # fixed: the same every time, and the two splits are disjoint and cover the data
    from cnnkit.data.digits import split_indices
    from sklearn.datasets import load_digits

    tr, te = split_indices(load_digits().target)
    assert len(np.intersect1d(tr, te)) == 0 and len(tr) + len(te) == 1797
    np.testing.assert_array_equal(load("digits", "test").images, test.images)


def test_unknown_name_and_split():
    assert list_datasets() == ["cifar10", "digits", "fashion-mnist", "mnist"]
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'.*cifar10"):
        load("imagenet")
    with pytest.raises(ValueError, match="unknown split 'val'"):
        load("digits", "val")
    assert load("DIGITS", "test").name == "digits"  # names are case- and underscore-insensitive


def test_missing_dataset_without_download_names_file_folder_and_url(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        load("mnist", root=tmp_path, download=False)
    message = str(info.value)
    assert "train-images-idx3-ubyte.gz" in message and str(tmp_path / "mnist") in message
    assert "https://ossci-datasets.s3.amazonaws.com/mnist/train-images-idx3-ubyte.gz" in message
    assert "CNNKIT_DATA" in message and "root=" in message
    with pytest.raises(DatasetNotFoundError, match="cifar10-subset.*cifar-10-python.tar.gz"):
        load("cifar10", root=tmp_path, download=False)


def test_dataset_container_behaviour():
    images = np.arange(2 * 1 * 2 * 2, dtype=np.uint8).reshape(2, 1, 2, 2)
    ds = Dataset(images, [1, 0], ["a", "b"], name="toy")
    assert len(ds) == 2 and ds.num_classes == 2 and ds.image_shape == (1, 2, 2)
    assert ds[1][1] == 0 and ds.labels.dtype == np.int64
    sub = ds.subset([1])
    assert len(sub) == 1 and sub.labels.tolist() == [0] and sub.classes == ["a", "b"]
    assert "2 images 1x2x2" in repr(ds)
    with pytest.raises(ValueError, match="labels must lie in 0..1"):
        Dataset(images, [0, 2], ["a", "b"], name="toy")
    with pytest.raises(ValueError, match="uint8"):
        Dataset(images.astype(np.float32), [0, 1], ["a", "b"], name="toy")
    with pytest.raises(TypeError, match="subset"):
        ds[[0, 1]]


# ----------------------------------------------------------------------------- ImageFolder
def _write_image(path, color, size=(7, 5), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)  # PIL size is (W, H)


def test_image_folder_loads_resizes_and_sorts_classes(tmp_path):
    _write_image(tmp_path / "zebra" / "b.png", (10, 20, 30))
    _write_image(tmp_path / "zebra" / "a.jpg", (200, 0, 0), size=(16, 16))
    _write_image(tmp_path / "ant" / "x.bmp", (0, 255, 0), size=(3, 9))
    (tmp_path / "ant" / "notes.txt").write_text("not an image")  # ignored
    ds = ImageFolder(tmp_path, size=(4, 6))
    assert ds.classes == ["ant", "zebra"]
    assert ds.images.shape == (3, 3, 4, 6) and ds.images.dtype == np.uint8
    assert ds.labels.tolist() == [0, 1, 1]
    assert [f.name for f in ds.files] == ["x.bmp", "a.jpg", "b.png"]
    assert ds.images[0, :, 2, 3].tolist() == [0, 255, 0]  # a solid colour survives resizing
    assert ds.images[2, :, 0, 0].tolist() == [10, 20, 30]
    gray = ImageFolder(tmp_path, size=5, grayscale=True)
    assert gray.images.shape == (3, 1, 5, 5)


def test_image_folder_errors_name_the_problem(tmp_path):
    with pytest.raises(DatasetFormatError, match="no class sub-folders"):
        ImageFolder(tmp_path)
    (tmp_path / "cat").mkdir()
    with pytest.raises(DatasetFormatError, match="cat holds no image files"):
        ImageFolder(tmp_path)
    _write_image(tmp_path / "cat" / "a.png", (1, 2, 3), size=(4, 4))
    _write_image(tmp_path / "cat" / "b.png", (1, 2, 3), size=(5, 4))
    with pytest.raises(DatasetFormatError, match="different sizes.*size="):
        ImageFolder(tmp_path)
    (tmp_path / "cat" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DatasetFormatError, match="broken.png"):
        ImageFolder(tmp_path, size=4)
    with pytest.raises(FileNotFoundError, match="not a folder"):
        ImageFolder(tmp_path / "missing", size=4)
    with pytest.raises(ValueError, match="size"):
        ImageFolder(tmp_path, size=(0, 3))
