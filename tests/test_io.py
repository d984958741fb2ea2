import collections
import math
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
torch = pytest.importorskip("torch")  # PyTorch is the oracle; without it these tests skip

from cnnkit.io import containers
from cnnkit.io.checkpoint import load, load_checkpoint, save
from cnnkit.io.state_dict import load_state_dict, read_metadata, save_state_dict
from cnnkit.io.torch_pickle import RefusedGlobalError, load_torch
from cnnkit.models import registry
from cnnkit.nn import Linear, Sequential

REPO = Path(__file__).resolve().parents[1]
TEST_MODEL = "_io_test_net"


def needs_safetensors(suffix=".safetensors"):
    if suffix == ".safetensors":
        pytest.importorskip("safetensors")


def expected_numpy(t: torch.Tensor) -> np.ndarray:
    """What cnnkit should read for a torch tensor: bfloat16 widens to float32."""
    t = t.detach()
    return (t.float() if t.dtype == torch.bfloat16 else t).contiguous().numpy()


def assert_state_equal(loaded, torch_state):
    assert list(loaded) == list(torch_state)
    for key, t in torch_state.items():
        want = expected_numpy(t)
        got = loaded[key]
        assert isinstance(got, np.ndarray), key
        assert got.dtype == want.dtype, (key, got.dtype, want.dtype)
        assert got.shape == want.shape, (key, got.shape, want.shape)
        np.testing.assert_array_equal(got, want, err_msg=key)


def many_dtypes_state():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(3, 4, generator=g)
    base = torch.arange(12, dtype=torch.float64)  # two tensors viewing one storage
    return collections.OrderedDict([
        ("float32", torch.randn(2, 3, generator=g)),
        ("float64", torch.randn(4, generator=g, dtype=torch.float64)),
        ("float16", torch.randn(5, generator=g).half()),
        ("bfloat16", torch.randn(2, 2, generator=g).bfloat16()),
        ("int64", torch.randint(-10**12, 10**12, (3,), generator=g)),
        ("int32", torch.randint(-1000, 1000, (2, 2), generator=g, dtype=torch.int32)),
        ("int16", torch.tensor([-3, 7], dtype=torch.int16)),
        ("int8", torch.tensor([-128, 127], dtype=torch.int8)),
        ("uint8", torch.tensor([0, 255, 7], dtype=torch.uint8)),
        ("uint16", torch.tensor([[0, 65535]], dtype=torch.uint16)),  # untyped storage + _rebuild_tensor_v3
        ("bool", torch.tensor([True, False, True])),
        ("complex64", torch.randn(3, generator=g, dtype=torch.complex64)),
        ("scalar", torch.tensor(3.25)),  # 0-d
        ("count", torch.tensor(7)),  # 0-d int64, like num_batches_tracked
        ("empty", torch.zeros(0, 3)),
        ("transposed", w.t()),  # non-contiguous: strides (1, 4)
        ("window", w[1:, 1:3]),  # storage offset 5, strides (4, 1)
        ("shared_head", base[:6].view(2, 3)),
        ("shared_tail", base[6:]),  # offset 6 into the same storage
        ("stepped", base[::3]),  # stride 3
        ("parameter", torch.nn.Parameter(torch.randn(2, generator=g))),
    ])


# -- PyTorch files ------------------------------------------------------------------------------
@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_torch_files_all_dtypes_and_views(tmp_path, legacy):
    state = many_dtypes_state()
    path = tmp_path / "weights.pt"
    torch.save(state, path, _use_new_zipfile_serialization=not legacy)
    loaded = load_state_dict(path)
    assert isinstance(loaded, collections.OrderedDict)
    assert_state_equal(loaded, state)
    # every array is its own contiguous, writable copy (views of one storage no longer share memory)
    assert all(a.flags.c_contiguous and a.flags.writeable for a in loaded.values())
    assert not np.shares_memory(loaded["shared_head"], loaded["shared_tail"])


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_torch_conv_bn_linear_state_dict(tmp_path, legacy):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                              torch.nn.Linear(4 * 3 * 3, 2))
    net(torch.randn(2, 3, 5, 5))  # a training-mode forward: running stats move, counter = 1
    state = net.state_dict()
    path = tmp_path / "net.pth"
    torch.save(state, path, _use_new_zipfile_serialization=not legacy)
    loaded = load_state_dict(path)
    assert list(loaded) == ["0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var",
                            "1.num_batches_tracked", "3.weight", "3.bias"]
    assert_state_equal(loaded, state)
    assert loaded["1.num_batches_tracked"].dtype == np.int64 and loaded["1.num_batches_tracked"].shape == ()
    assert loaded["1.num_batches_tracked"] == 1


def test_torch_files_load_without_torch(tmp_path):
    """In a fresh interpreter where `import torch` fails, both formats load and match."""
    state = many_dtypes_state()
    torch.save(state, tmp_path / "new.pt")
    torch.save(state, tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    np.savez(tmp_path / "expected.npz", **{k: expected_numpy(t) for k, t in state.items()})
    script = f"""
import sys
sys.modules["torch"] = None  # any import of torch now raises ImportError
import numpy as np
import cnnkit.io
expected = np.load({str(tmp_path / "expected.npz")!r})
for name in ("new.pt", "old.pt"):
    loaded = cnnkit.io.load_state_dict({str(tmp_path)!r} + "/" + name)
    assert list(loaded) == list(expected.files), name
    for key in expected.files:
        assert loaded[key].dtype == expected[key].dtype, key
        np.testing.assert_array_equal(loaded[key], expected[key])
assert not [m for m in sys.modules if m.startswith("torch") and sys.modules[m] is not None]
print("ok")
"""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_wrapped_checkpoints_are_unwrapped(tmp_path):
    net = torch.nn.Linear(3, 2)
    state = net.state_dict()
    optimizer = {"state": {0: {"momentum_buffer": torch.ones(2, 3)}}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]}
    for wrapper in ("state_dict", "model_state_dict", "model"):
        path = tmp_path / f"{wrapper}.ckpt"
        torch.save({"epoch": 4, wrapper: state, "optimizer": optimizer}, path)
        assert_state_equal(load_state_dict(path), state)


def test_data_parallel_prefix_is_stripped_only_when_every_key_has_it(tmp_path):
    a, b = torch.ones(2), torch.zeros(3)
    torch.save({"module.fc.weight": a, "module.fc.bias": b}, tmp_path / "dp.pt")
    assert list(load_state_dict(tmp_path / "dp.pt")) == ["fc.weight", "fc.bias"]
    assert list(load_state_dict(tmp_path / "dp.pt", strip_data_parallel=False)) == ["module.fc.weight",
                                                                                      "module.fc.bias"]
    torch.save({"module.fc.weight": a, "head.bias": b}, tmp_path / "mixed.pt")
    assert list(load_state_dict(tmp_path / "mixed.pt")) == ["module.fc.weight", "head.bias"]


def test_load_torch_returns_whole_object(tmp_path):
    torch.save({"epoch": 3, "weights": [torch.ones(2)], "lr": 0.5}, tmp_path / "obj.pt")
    obj = load_torch(tmp_path / "obj.pt")
    assert obj["epoch"] == 3 and obj["lr"] == 0.5
    np.testing.assert_array_equal(obj["weights"][0], np.ones(2, np.float32))
    with pytest.raises(ValueError, match="not a state dict.*'epoch'"):
        load_state_dict(tmp_path / "obj.pt")
    torch.save(torch.ones(3), tmp_path / "tensor.pt")
    with pytest.raises(ValueError, match="single tensor"):
        load_state_dict(tmp_path / "tensor.pt")


class _Evil:
    """Unpickling this runs ``callable(argument)`` with a normal pickle."""

    def __init__(self, call, argument):
        self.call, self.argument = call, argument

    def __reduce__(self):
        return (self.call, (self.argument,))


def _replace_data_pkl(good: Path, bad: Path, payload: bytes) -> None:
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bad, "w") as dst:
        for item in src.infolist():
            data = payload if item.filename.endswith("/data.pkl") else src.read(item.filename)
            dst.writestr(item, data)


@pytest.mark.parametrize("call,refused", [(os.system, "system'"), (eval, "eval'")], ids=["os.system", "eval"])
@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_malicious_pickle_is_refused_and_not_executed(tmp_path, call, refused, layout):
    marker = tmp_path / "pwned"
    if call is os.system:
        argument = f"touch {marker}"
    else:
        argument = f"open({str(marker)!r}, 'w').write('pwned')"
    payload = pickle.dumps({"weight": _Evil(call, argument)}, protocol=2)
    path = tmp_path / "evil.pt"
    if layout == "zip":
        torch.save({"weight": torch.ones(2)}, tmp_path / "good.pt")
        _replace_data_pkl(tmp_path / "good.pt", path, payload)
    else:
        path.write_bytes(payload)  # a bare pickle: the legacy reader's first load meets the global
    with pytest.raises(pickle.UnpicklingError, match="never executes code") as info:
        load_state_dict(path)
    assert isinstance(info.value, RefusedGlobalError)
    assert refused in str(info.value)
    assert not marker.exists()
    pickle.loads(payload)  # control: a plain unpickler does run the payload
    assert marker.exists()


def test_whole_pickled_module_is_refused_with_a_hint(tmp_path):
    torch.save(torch.nn.Linear(2, 2), tmp_path / "model.pt")
    with pytest.raises(RefusedGlobalError, match=r"torch\.nn\.modules\.linear\.Linear.*state_dict\(\)"):
        load_state_dict(tmp_path / "model.pt")


class _OutOfBounds:
    """A tensor record whose size reaches past its storage (a corrupt or hostile file)."""

    def __init__(self, tensor):
        self.tensor = tensor

    def __reduce__(self):
        storage = torch.storage.TypedStorage(wrap_storage=self.tensor.untyped_storage(), dtype=self.tensor.dtype,
                                             _internal=True)
        return (torch._utils._rebuild_tensor_v2, (storage, 0, (100,), (1,), False, collections.OrderedDict()))


def test_tensor_past_its_storage_is_refused(tmp_path):
    torch.save({"x": _OutOfBounds(torch.arange(6.0))}, tmp_path / "oob.pt")
    with pytest.raises(pickle.UnpicklingError, match="reaches element 99 .* holds 6"):
        load_state_dict(tmp_path / "oob.pt")


def test_truncated_storage_is_refused(tmp_path):
    torch.save({"w": torch.ones(8)}, tmp_path / "good.pt")
    with zipfile.ZipFile(tmp_path / "good.pt") as src, zipfile.ZipFile(tmp_path / "cut.pt", "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            dst.writestr(item, data[:5] if item.filename.endswith("/data/0") else data)
    with pytest.raises(pickle.UnpicklingError, match="holds 5 bytes, 32 expected"):
        load_state_dict(tmp_path / "cut.pt")


def test_not_a_torch_file(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"hello world")
    with pytest.raises(pickle.UnpicklingError, match="not a PyTorch file"):
        load_state_dict(tmp_path / "junk.pt")


# -- safetensors and npz ------------------------------------------------------------------------
def numpy_state(rng):
    return collections.OrderedDict([
        ("b.weight", rng.standard_normal((3, 2)).astype(np.float32)),
        ("a.bias", rng.standard_normal(3)),
        ("half", rng.standard_normal(4).astype(np.float16)),
        ("bn.num_batches_tracked", np.array(5, dtype=np.int64)),
        ("mask", np.array([True, False])),
        ("pixels", np.array([[0, 255]], dtype=np.uint8)),
        ("strided", rng.standard_normal((4, 4)).astype(np.float32)[::2, ::-1]),  # written contiguous
    ])


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_round_trip_keeps_values_dtypes_and_order(tmp_path, rng, suffix):
    needs_safetensors(suffix)
    state = numpy_state(rng)
    path = tmp_path / f"weights{suffix}"
    save_state_dict(state, path)
    loaded = load_state_dict(path)
    assert list(loaded) == list(state)
    for key, value in state.items():
        assert loaded[key].dtype == value.dtype and loaded[key].shape == value.shape
        np.testing.assert_array_equal(loaded[key], value)
        assert loaded[key].flags.writeable


def test_module_state_dict_round_trip(tmp_path, rng):
    net = Sequential(Linear(4, 3, generator=rng), Linear(3, 2, generator=rng))
    save_state_dict(net, tmp_path / "net.npz")
    other = Sequential(Linear(4, 3), Linear(3, 2))
    other.load_state_dict(load_state_dict(tmp_path / "net.npz"))
    x = rng.standard_normal((2, 4)).astype(np.float32)
    np.testing.assert_array_equal(other(x), net(x))


def test_foreign_safetensors_with_bfloat16(tmp_path):
    st_torch = pytest.importorskip("safetensors.torch")
    tensors = {"z": torch.tensor([1.5, -2.0, 3.0e38]).bfloat16(), "a": torch.arange(3, dtype=torch.int32),
               "s": torch.tensor(2.0)}
    st_torch.save_file(tensors, tmp_path / "hub.safetensors", metadata={"format": "pt"})
    loaded = load_state_dict(tmp_path / "hub.safetensors")
    assert list(loaded) == ["a", "s", "z"]  # no order in the format: sorted
    assert loaded["z"].dtype == np.float32
    np.testing.assert_array_equal(loaded["z"], tensors["z"].float().numpy())
    np.testing.assert_array_equal(loaded["a"], np.arange(3, dtype=np.int32))
    assert loaded["s"].shape == ()


def test_npz_written_by_numpy_keeps_file_order(tmp_path):
    np.savez(tmp_path / "plain.npz", zeta=np.ones(2), alpha=np.zeros(1))
    assert list(load_state_dict(tmp_path / "plain.npz")) == ["zeta", "alpha"]


def test_npz_is_read_without_pickle(tmp_path):
    np.savez(tmp_path / "objects.npz", bad=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="allow_pickle"):
        load_state_dict(tmp_path / "objects.npz")


def test_unknown_extension_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match=r"'\.h5'.*\.pt, \.pth, \.bin, \.ckpt, \.safetensors, \.npz"):
        load_state_dict(tmp_path / "w.h5")
    missing = tmp_path / "nothing.safetensors"
    with pytest.raises(FileNotFoundError, match="nothing.safetensors"):
        load_state_dict(missing)
    with pytest.raises(ValueError, match=r"\.safetensors, \.npz"):
        save_state_dict({"w": np.ones(1)}, tmp_path / "w.pt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        save_state_dict({"w": np.ones(1)}, tmp_path / "no_folder" / "w.npz")


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_crash_mid_write_leaves_previous_file(tmp_path, monkeypatch, suffix):
    needs_safetensors(suffix)
    path = tmp_path / f"weights{suffix}"
    save_state_dict({"w": np.arange(4.0)}, path)
    real_writer = containers._WRITERS[suffix]

    def crashing_writer(temporary, arrays, metadata):
        real_writer(temporary, arrays, metadata)
        with open(temporary, "r+b") as f:  # half the bytes are on disk when the "crash" comes
            f.truncate(os.path.getsize(temporary) // 2)
        raise RuntimeError("simulated crash")

    monkeypatch.setitem(containers._WRITERS, suffix, crashing_writer)
    with pytest.raises(RuntimeError, match="simulated crash"):
        save_state_dict({"w": np.zeros(1000)}, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary file left
    np.testing.assert_array_equal(load_state_dict(path)["w"], np.arange(4.0))


def test_missing_safetensors_package_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "safetensors", None)
    with pytest.raises(ImportError, match="pip install safetensors"):
        save_state_dict({"w": np.ones(1)}, tmp_path / "w.safetensors")
    assert list(tmp_path.iterdir()) == []


# -- checkpoints --------------------------------------------------------------------------------
@pytest.fixture
def test_model():
    def build(hidden=4, num_classes=3, seed=0):
        generator = np.random.default_rng(seed)
        return Sequential(Linear(5, hidden, generator=generator), Linear(hidden, num_classes, generator=generator))

    assert TEST_MODEL not in registry.list_models()
    registry.register(TEST_MODEL)(build)
    yield TEST_MODEL
    registry._MODELS.pop(TEST_MODEL, None)


def assert_same_tree(got, want, where="state"):
    """Exact equality that also checks types (tuple vs list, key types, NumPy dtypes, nan)."""
    assert type(got) is type(want) or (isinstance(want, dict) and type(got) is dict), (where, type(got), type(want))
    if isinstance(want, np.ndarray):
        assert got.dtype == want.dtype and got.shape == want.shape, where
        np.testing.assert_array_equal(got, want, err_msg=where)
    elif isinstance(want, np.generic):
        assert got.dtype == want.dtype and (got == want or (np.isnan(got) and np.isnan(want))), where
    elif isinstance(want, dict):
        assert list(got) == list(want), where
        assert [type(k) for k in got] == [type(k) for k in want], where
        for key in want:
            assert_same_tree(got[key], want[key], f"{where}[{key!r}]")
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            assert_same_tree(g, w, f"{where}[{i}]")
    elif isinstance(want, float) and math.isnan(want):
        assert math.isnan(got), where
    else:
        assert got == want, where


def training_state(rng):
    generator = np.random.default_rng(12345)
    generator.standard_normal(7)  # advance it: its state is two 128-bit ints
    return {
        "epoch": 3,
        "rng": generator.bit_generator.state,
        "mt19937": np.random.MT19937(5).state,  # holds a uint32 key array
        "optimizer": {
            "state": {0: {"momentum_buffer": rng.standard_normal((4, 5)).astype(np.float32), "step": np.int64(5)},
                      1: {"momentum_buffer": rng.standard_normal(4).astype(np.float32), "step": np.int64(5)}},
            "param_groups": [{"lr": 0.1, "betas": (0.9, 0.999), "params": [0, 1], "nesterov": False}],
        },
        "scheduler": {"last_epoch": 3, "milestones": {2: 1, 5: 1}, "gamma": np.float32(0.1)},
        "history": [{"loss": 1.25, "accuracy": float("nan")}, {"loss": -0.0, "accuracy": float("inf")}],
        "pairs": {(1, "a"): "tuple key", "k": None},
        "looks_like_a_tag": {"__tuple__": [1, 2]},
        "blob": b"\x00\xffbytes",
        "huge": 2**200 + 1,
        "dtype": np.float64,
        "flags": [True, False],
    }


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_checkpoint_round_trip(tmp_path, rng, test_model, suffix):
    needs_safetensors(suffix)
    from cnnkit.models import create

    model = create(test_model, hidden=6, seed=1)
    state = training_state(rng)
    path = tmp_path / f"run{suffix}"
    save(model, path, training_state=state)

    checkpoint = load_checkpoint(path)
    assert checkpoint.config == {"name": test_model, "kwargs": {"hidden": 6, "seed": 1}}
    assert checkpoint.metadata["format"] == "cnnkit-checkpoint"
    assert checkpoint.metadata["cnnkit_version"] == __import__("cnnkit").__version__
    restored = checkpoint.training_state
    want = dict(state, dtype=np.dtype(np.float64))  # dtypes come back as np.dtype
    assert_same_tree(restored, want)
    assert restored["rng"]["state"]["state"] == state["rng"]["state"]["state"] > 2**64

    continued = np.random.default_rng()
    continued.bit_generator.state = restored["rng"]
    original = np.random.default_rng(12345)
    original.standard_normal(7)
    np.testing.assert_array_equal(continued.standard_normal(5), original.standard_normal(5))

    rebuilt = load(path)
    assert rebuilt.config == model.config
    for (k1, v1), (k2, v2) in zip(rebuilt.state_dict().items(), model.state_dict().items()):
        assert k1 == k2 and v1.dtype == v2.dtype
        np.testing.assert_array_equal(v1, v2)
    x = rng.standard_normal((2, 5)).astype(np.float32)
    np.testing.assert_array_equal(rebuilt(x), model(x))

    header = read_metadata(path)
    assert header["config"]["name"] == test_model and header["training_state"]["epoch"] == 3

    # the weights alone read like any state dict file, in the model's order, without the extras
    weights = load_state_dict(path)
    assert list(weights) == list(model.state_dict())


def test_checkpoint_keeps_float64(tmp_path, test_model):
    from cnnkit.models import create

    needs_safetensors()
    model = create(test_model).double()
    save(model, tmp_path / "f64.safetensors")
    rebuilt = load(tmp_path / "f64.safetensors")
    assert rebuilt.dtype == np.float64
    np.testing.assert_array_equal(rebuilt.state_dict()["1.weight"], model.state_dict()["1.weight"])
    assert load_checkpoint(tmp_path / "f64.safetensors").training_state is None


def test_checkpoint_without_config(tmp_path, rng):
    model = Sequential(Linear(2, 3, generator=rng))  # built by hand: no model.config
    save(model, tmp_path / "plain.npz", training_state={"epoch": 1})
    with pytest.raises(ValueError, match=r"model\.load_state_dict\(cnnkit\.io\.load_state_dict"):
        load(tmp_path / "plain.npz")
    fresh = Sequential(Linear(2, 3))
    checkpoint = load_checkpoint(tmp_path / "plain.npz", model=fresh)
    assert checkpoint.model is fresh and checkpoint.training_state == {"epoch": 1}
    np.testing.assert_array_equal(fresh.state_dict()["0.weight"], model.state_dict()["0.weight"])
    save_state_dict(model, tmp_path / "weights.npz")  # plain weights are no checkpoint either
    with pytest.raises(ValueError, match="no model config"):
        load(tmp_path / "weights.npz")


def test_unsupported_training_state_names_where_and_writes_nothing(tmp_path, test_model):
    from cnnkit.models import create

    path = tmp_path / "bad.safetensors"
    with pytest.raises(TypeError, match=r"training_state\['history'\]\[1\]: cannot store a set"):
        save(create(test_model), path, training_state={"history": [1, {2, 3}]})
    assert list(tmp_path.iterdir()) == []
