"""Hostile and damaged files (issue 17, items 1, 2 and 10): every file is made inside the test.

Weight, checkpoint and dataset files are untrusted input: a refused file leaves nothing behind
for the next load, sizes are checked against the file before anything is allocated, and every
failure is one error naming the file and the field. Memory is measured with tracemalloc, which
sees NumPy's allocations (an untouched ``np.empty`` of 1 GB counts as 1 GB).
"""
from __future__ import annotations

import gzip
import io
import json
import pickle
import struct
import tarfile
import tracemalloc
import zipfile

import numpy as np
import pytest

import cnnkit.io
from cnnkit.data import cifar
from cnnkit.data.download import DatasetFormatError
from cnnkit.data.idx import read_idx_images, read_idx_labels
from cnnkit.io import containers, torch_pickle
from cnnkit.io.checkpoint import load_checkpoint, save
from cnnkit.io.state_dict import load_state_dict, read_metadata

torch = pytest.importorskip("torch")

MB = 1 << 20


def peak_bytes(fn, *args, **kwargs):
    """``(result or exception, peak bytes allocated while fn ran)``."""
    tracemalloc.start()
    try:
        try:
            result = fn(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - returned for the caller to check
            result = error
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def rewrite_zip(src, dst, replace=None, compress=None):
    """Copy the zip ``src`` to ``dst``, replacing record data (``{suffix: bytes}``) and compression."""
    replace = replace or {}
    with zipfile.ZipFile(src) as a, zipfile.ZipFile(dst, "w") as b:
        for info in a.infolist():
            data = next((v for k, v in replace.items() if info.filename.endswith(k)), None)
            data = a.read(info.filename) if data is None else data
            kind = next((v for k, v in (compress or {}).items() if info.filename.endswith(k)), zipfile.ZIP_STORED)
            b.writestr(info.filename, data, compress_type=kind)
    return dst


def forge_declared_size(path, name: str, size: int):
    """Set the uncompressed size of record ``name`` in the zip's central directory (what zipfile trusts)."""
    data = bytearray(path.read_bytes())
    encoded = name.encode()
    start = 0
    while True:
        start = data.index(b"PK\x01\x02", start)
        if data[start + 46:start + 46 + len(encoded)] == encoded:
            struct.pack_into("<I", data, start + 24, size)
            path.write_bytes(bytes(data))
            return path
        start += 4


# -- item 1: no state shared between loads ------------------------------------------------------
ISSUE_PAYLOAD = (b"\x80\x02ctorch\nFloatStorage\n}X\x05\x00\x00\x00dtypeX\x08\x00\x00\x00bfloat16sb0"
                 b"cposix\nsystem\n(X\x04\x00\x00\x00truetR.")


def test_issue_example_refused_file_does_not_corrupt_the_next_load(tmp_path):
    torch.save({"w": torch.arange(6.0)}, tmp_path / "good.pt")
    with zipfile.ZipFile(tmp_path / "evil.pt", "w") as z:
        z.writestr("a/data.pkl", ISSUE_PAYLOAD)
    with pytest.raises(pickle.UnpicklingError, match="evil.pt: BUILD .* OrderedDict only"):
        load_state_dict(tmp_path / "evil.pt")
    np.testing.assert_array_equal(load_state_dict(tmp_path / "good.pt")["w"], np.arange(6.0, dtype=np.float32))


def test_issue_example_as_a_legacy_stream(tmp_path):
    torch.save({"w": torch.arange(6.0)}, tmp_path / "good.pt", _use_new_zipfile_serialization=False)
    (tmp_path / "evil.pt").write_bytes(ISSUE_PAYLOAD)
    with pytest.raises(pickle.UnpicklingError, match="BUILD"):
        load_state_dict(tmp_path / "evil.pt")
    np.testing.assert_array_equal(load_state_dict(tmp_path / "good.pt")["w"], np.arange(6.0, dtype=np.float32))


def test_each_load_gets_its_own_immutable_stand_ins():
    first, second = torch_pickle._allowed_globals(), torch_pickle._allowed_globals()
    storage = first[("torch", "FloatStorage")]
    assert storage == second[("torch", "FloatStorage")] and storage is not second[("torch", "FloatStorage")]
    with pytest.raises(AttributeError):
        storage.dtype = np.dtype(np.uint16)  # a NamedTuple: nothing to set


G = b"ctorch._utils\n_rebuild_tensor_v2\n"


def tensor_ops(tmp_path) -> bytes:
    """The opcodes that build torch.ones(1) (its data.pkl without PROTO and STOP)."""
    torch.save(torch.ones(1), tmp_path / "t.pt")
    with zipfile.ZipFile(tmp_path / "t.pt") as z:
        return z.read(next(n for n in z.namelist() if n.endswith("/data.pkl")))[2:-1]


@pytest.mark.parametrize("body,rule", [
    (b"ctorch\nfloat32\n}X\x01\x00\x00\x00aK\x01sb", "BUILD .* OrderedDict only, got a _TorchDtype"),
    (G + b"}X\x08\x00\x00\x00__dict__}sb", "BUILD .* got a function"),
    (b"{T}}X\x01\x00\x00\x00aK\x01sb", "BUILD .* got a ndarray"),
    (b"}}X\x01\x00\x00\x00aK\x01sb", "BUILD .* got a dict"),
    (b"](X\x01\x00\x00\x00aK\x01u", "SETITEMS applies to a dict or OrderedDict only, got a list"),
    (b"{T}K\x00K\x07s", "SETITEM applies to a dict or OrderedDict only, got a ndarray"),
    (b"}K\x01a", "APPEND applies to a list only, got a dict"),
    (b"ctorch\nFloatStorage\n)R", "REDUCE on a _StorageType, which cannot be called"),
    (G + b")\x81", "NEWOBJ builds an empty OrderedDict only"),
    (b"(K\x01K\x02i__main__\nX\n", "opcode b'i' .* refused"),
], ids=["build-dtype", "build-function", "build-tensor", "build-dict", "setitems-list", "setitem-tensor",
        "append-dict", "reduce-storage-type", "newobj-function", "inst"])
def test_opcodes_follow_torchs_weights_only_rules(tmp_path, body, rule):
    torch.save({"w": torch.ones(1)}, tmp_path / "good.pt")
    body = body.replace(b"{T}", tensor_ops(tmp_path))
    rewrite_zip(tmp_path / "good.pt", tmp_path / "bad.pt", {"/data.pkl": b"\x80\x02" + body + b"."})
    with pytest.raises(pickle.UnpicklingError, match=rule):
        load_state_dict(tmp_path / "bad.pt")


def test_state_dict_metadata_still_loads(tmp_path):
    """torch's state_dict is an OrderedDict with a ``_metadata`` attribute: BUILD on it is allowed."""
    state = torch.nn.Sequential(torch.nn.Linear(2, 2)).state_dict()
    assert hasattr(state, "_metadata")
    torch.save(state, tmp_path / "meta.pt")
    loaded = cnnkit.io.load_torch(tmp_path / "meta.pt")
    assert list(loaded) == ["0.weight", "0.bias"] and "0" in loaded._metadata


# -- item 2: memory bombs in .pt files ----------------------------------------------------------
@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_stride_zero_tensor_is_a_read_only_view_not_a_512_mb_copy(tmp_path, legacy):
    path = tmp_path / "stride0.pt"
    torch.save({"w": torch.zeros(1).expand(16384, 8192)}, path, _use_new_zipfile_serialization=not legacy)
    assert path.stat().st_size < 4096
    state, peak = peak_bytes(load_state_dict, path)
    w = state["w"]
    assert w.shape == (16384, 8192) and w.strides == (0, 0) and not w.flags.writeable
    assert float(w[16383, 8191]) == 0.0
    assert peak < MB, peak


def test_many_tensors_over_one_storage_stop_being_copied(tmp_path, monkeypatch):
    monkeypatch.setattr(torch_pickle, "COPY_SLACK_BYTES", 0)
    big = torch.arange(256 * 1024, dtype=torch.float32)  # 1 MiB storage
    torch.save({f"t{i}": big[:] for i in range(40)}, tmp_path / "shared.pt")  # 40 views, one storage
    state, peak = peak_bytes(load_state_dict, tmp_path / "shared.pt")
    assert [a.flags.writeable for a in state.values()][:3] == [True, True, False]  # 2 copies: COPY_FACTOR
    assert all(np.array_equal(a, big.numpy()) for a in state.values())
    assert peak < 6 * MB, peak  # storage + two copies, not 40 MiB


def test_a_deflated_record_is_read_only_as_far_as_the_tensor_needs(tmp_path):
    """A small tensor whose storage record inflates to 64 MB: only the tensor's 16 bytes are inflated."""
    torch.save({"w": torch.arange(4.0)}, tmp_path / "good.pt")
    record = torch.arange(4.0).numpy().tobytes() + bytes(64 * MB)
    rewrite_zip(tmp_path / "good.pt", tmp_path / "bomb.pt", {"/data/0": record}, {"/data/0": zipfile.ZIP_DEFLATED})
    assert (tmp_path / "bomb.pt").stat().st_size < 200_000
    state, peak = peak_bytes(load_state_dict, tmp_path / "bomb.pt")
    np.testing.assert_array_equal(state["w"], np.arange(4.0, dtype=np.float32))
    assert peak < 4 * MB, peak


def test_a_record_declaring_more_than_deflate_can_produce_is_refused_before_allocating(tmp_path):
    numel = 1 << 28  # a 1 GiB float32 storage
    torch.save({"w": torch.zeros(4)}, tmp_path / "small.pt")
    with zipfile.ZipFile(tmp_path / "small.pt") as z:
        pkl = z.read(next(n for n in z.namelist() if n.endswith("/data.pkl")))
    # the same pickle, but storage 0 and the tensor declare 2**28 elements
    big = b"J" + struct.pack("<i", numel)
    pkl = pkl.replace(b"K\x04t", big + b"t").replace(b"K\x04\x85", big + b"\x85")  # storage numel, size
    rewrite_zip(tmp_path / "small.pt", tmp_path / "forged.pt", {"/data.pkl": pkl, "/data/0": bytes(1 << 20)},
                {"/data/0": zipfile.ZIP_DEFLATED})
    name = next(n for n in zipfile.ZipFile(tmp_path / "forged.pt").namelist() if n.endswith("/data/0"))
    forge_declared_size(tmp_path / "forged.pt", name, 4 * numel)
    error, peak = peak_bytes(load_state_dict, tmp_path / "forged.pt")
    assert isinstance(error, pickle.UnpicklingError), error
    assert "forged.pt" in str(error) and "declares 1073741824 bytes" in str(error) and "cannot hold" in str(error)
    assert peak < 8 * MB, peak


def test_records_in_other_compressions_are_refused(tmp_path):
    torch.save({"w": torch.ones(3)}, tmp_path / "good.pt")
    rewrite_zip(tmp_path / "good.pt", tmp_path / "bz.pt", compress={"/data/0": zipfile.ZIP_BZIP2})
    with pytest.raises(pickle.UnpicklingError, match="bz.pt: storage .* compression method 12"):
        load_state_dict(tmp_path / "bz.pt")


def _legacy_file(tmp_path, name="legacy.pt"):
    path = tmp_path / name
    torch.save({"w": torch.arange(3.0)}, path, _use_new_zipfile_serialization=False)
    return path, path.read_bytes()


def test_legacy_storage_declaring_more_than_the_file_is_refused(tmp_path):
    path, data = _legacy_file(tmp_path)
    count_at = len(data) - 12 - 8  # 3 floats, after their int64 element count
    assert struct.unpack("<q", data[count_at:count_at + 8])[0] == 3
    path.write_bytes(data[:count_at] + struct.pack("<q", 1 << 40) + data[count_at + 8:])
    error, peak = peak_bytes(load_state_dict, path)
    assert isinstance(error, pickle.UnpicklingError) and "declares 1099511627776 elements" in str(error), error
    assert peak < MB


def test_pickle_lengths_and_steps_are_bounded(tmp_path, monkeypatch):
    torch.save({"w": torch.ones(1)}, tmp_path / "good.pt")
    huge_string = b"\x80\x02X\xff\xff\xff\xff."  # a 4 GiB string in a 9-byte pickle
    rewrite_zip(tmp_path / "good.pt", tmp_path / "long.pt", {"/data.pkl": huge_string})
    error, peak = peak_bytes(load_state_dict, tmp_path / "long.pt")
    assert isinstance(error, pickle.UnpicklingError) and "a field of 4294967295 bytes" in str(error), error
    assert peak < MB
    monkeypatch.setattr(torch_pickle, "MAX_PICKLE_OPS", 100)
    rewrite_zip(tmp_path / "good.pt", tmp_path / "steps.pt", {"/data.pkl": b"\x80\x02" + b"N" * 200 + b"."})
    with pytest.raises(pickle.UnpicklingError, match="runs past 100 steps"):
        load_state_dict(tmp_path / "steps.pt")


# -- item 2: checkpoints -------------------------------------------------------------------------
def test_checkpoint_config_larger_than_its_weights_is_refused_before_building(tmp_path):
    """The issue's 215-byte file: resnet18 with num_classes=150000 and one tensor."""
    import safetensors.numpy

    metadata = {"format": "cnnkit-checkpoint", "format_version": 1,
                "config": {"name": "resnet18", "kwargs": {"num_classes": 150000}}}
    path = tmp_path / "bomb.safetensors"
    safetensors.numpy.save_file({"w": np.zeros(1, np.float32)}, str(path), metadata={"cnnkit": json.dumps(metadata)})
    assert path.stat().st_size < 300
    error, peak = peak_bytes(load_checkpoint, path)
    assert isinstance(error, ValueError), error
    assert "bomb.safetensors" in str(error) and "does not match its weights" in str(error)
    assert "resnet18(num_classes=150000)" in str(error)
    assert peak < MB, peak


def test_checkpoint_whose_config_was_edited_is_refused_at_the_oversized_layer(tmp_path):
    from cnnkit.models import create

    save(create("lenet5", seed=0), tmp_path / "lenet.safetensors")
    arrays, text = containers.read_safetensors(tmp_path / "lenet.safetensors")
    metadata = json.loads(text)
    metadata["config"]["kwargs"]["num_classes"] = 150000
    containers.write_container(tmp_path / "edited.safetensors", arrays, json.dumps(metadata))
    error, peak = peak_bytes(load_checkpoint, tmp_path / "edited.safetensors")
    assert isinstance(error, ValueError) and "Linear: weight of shape (150000, 84)" in str(error), error
    assert "61,706 values of the weights in" in str(error)
    assert peak < 2 * MB, peak  # 150000 x 84 float32 would be 50 MB


@pytest.mark.parametrize("name,kwargs", [("lenet5", {}), ("resnet20", {}), ("digitnet", {}),
                                         ("spec", {"spec": "conv3-8 bn maxpool fc-16 fc-10", "input_shape": [1, 8, 8]})])
def test_real_checkpoints_still_build_within_their_weights(tmp_path, name, kwargs):
    from cnnkit.models import create

    model = create(name, **kwargs)
    save(model, tmp_path / "m.safetensors")
    loaded = load_checkpoint(tmp_path / "m.safetensors").model
    for (key, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        np.testing.assert_array_equal(a, b, err_msg=key)


# -- item 2: datasets ------------------------------------------------------------------------------
class _Reduce:
    def __init__(self, *reduced):
        self.reduced = reduced

    def __reduce__(self):
        return self.reduced


def test_cifar_batch_with_zero_strides_is_refused(tmp_path):
    """The issue's 212-byte pickle: numpy.ndarray((300040, 3072), u1, b"\\0", 0, (0, 0))."""
    data = _Reduce(np.ndarray, ((300040, 3072), np.dtype("u1"), b"\x00", 0, (0, 0)))
    raw = pickle.dumps({b"data": data, b"labels": [0] * 0}, protocol=2)
    assert len(raw) < 300 and pickle.loads(raw)[b"data"].shape == (300040, 3072)  # the payload is real
    (tmp_path / "data_batch_1").write_bytes(raw)
    error, peak = peak_bytes(cifar.read_batch, tmp_path / "data_batch_1")
    assert isinstance(error, DatasetFormatError) and "data_batch_1" in str(error), error
    assert peak < MB, peak


@pytest.mark.parametrize("reduced", [
    (np.ndarray.__reduce__(np.zeros(1))[0], (np.ndarray, (0,), b"b"), (1, (1 << 40,), np.dtype("u1"), False, b"x")),
    (np.ndarray.__reduce__(np.zeros(1))[0], (np.ndarray, (1 << 40,), b"b")),
], ids=["state", "reconstruct"])
def test_cifar_batch_declaring_a_tebibyte_is_a_format_error_not_memory_error(tmp_path, reduced):
    (tmp_path / "b").write_bytes(pickle.dumps({b"data": _Reduce(*reduced), b"labels": []}, protocol=2))
    error, peak = peak_bytes(cifar.read_batch, tmp_path / "b")
    assert isinstance(error, DatasetFormatError) and str(tmp_path / "b") in str(error), error
    assert peak < MB, peak


def test_cifar_stand_ins_are_fresh_for_every_load(tmp_path):
    """BUILD on the stand-in of _codecs.encode (a function) cannot reach the next load."""
    evil = b"\x80\x02c_codecs\nencode\n}X\x07\x00\x00\x00patchedK\x01sb."
    (tmp_path / "evil").write_bytes(evil)
    cifar.restricted_load(tmp_path / "evil")
    first, second = cifar._allowed_globals(), cifar._allowed_globals()
    assert first[("_codecs", "encode")] is not second[("_codecs", "encode")]
    assert not hasattr(second[("_codecs", "encode")], "patched")


def test_cifar_tarball_member_larger_than_any_official_one_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(cifar, "MAX_MEMBER_BYTES", 1000)
    with tarfile.open(tmp_path / "c.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
        info.size = 2000
        tar.addfile(info, io.BytesIO(bytes(2000)))
    with pytest.raises(DatasetFormatError, match="data_batch_1' of 2000 bytes.*not the official tarball"):
        cifar.extract_tarball(tmp_path / "c.tar.gz", tmp_path)
    assert not (tmp_path / "cifar-10-batches-py").exists()


def _idx_gz(path, magic, dims, payload: bytes):
    path.write_bytes(gzip.compress(np.array([magic, *dims], dtype=">u4").tobytes() + payload))
    return path


def test_idx_header_announcing_more_than_the_gzip_can_hold(tmp_path):
    path = _idx_gz(tmp_path / "big.gz", 2051, [60000, 280, 280], b"")
    error, peak = peak_bytes(read_idx_images, path)
    assert isinstance(error, DatasetFormatError), error
    assert "big.gz: its header announces 60000 x 280 x 280 = 4704000000 values, more than a" in str(error)
    assert peak < MB, peak


def test_idx_gzip_bomb_is_not_inflated_past_what_the_header_announces(tmp_path):
    path = _idx_gz(tmp_path / "labels.gz", 2049, [10], bytes(64 * MB))
    error, peak = peak_bytes(read_idx_labels, path)
    assert isinstance(error, DatasetFormatError) and "trailing bytes" in str(error), error
    assert peak < 4 * MB, peak


# -- item 10: loader internals become one error naming the file and field ------------------------
def test_legacy_file_cut_inside_a_storage_count(tmp_path):
    path, data = _legacy_file(tmp_path)
    path.write_bytes(data[:len(data) - 12 - 5])  # ends 3 bytes into the int64 count (was struct.error)
    with pytest.raises(pickle.UnpicklingError, match="legacy.pt: file ends before the size of storage"):
        load_state_dict(path)


def test_legacy_file_whose_system_info_is_not_a_dict(tmp_path):
    stream = b"".join(pickle.dumps(v, protocol=2) for v in (torch_pickle.LEGACY_MAGIC_NUMBER, 1001, [1, 2]))
    (tmp_path / "info.pt").write_bytes(stream)  # was AttributeError: 'list' object has no attribute 'get'
    with pytest.raises(pickle.UnpicklingError, match="info.pt: corrupt legacy file .system info is a list"):
        load_state_dict(tmp_path / "info.pt")


def test_text_that_is_not_utf8(tmp_path):
    torch.save({"w": torch.ones(1)}, tmp_path / "good.pt")
    rewrite_zip(tmp_path / "good.pt", tmp_path / "order.pt", {"/byteorder": b"\xff\xfe"})
    with pytest.raises(pickle.UnpicklingError, match="order.pt: unknown byteorder"):
        load_state_dict(tmp_path / "order.pt")
    rewrite_zip(tmp_path / "good.pt", tmp_path / "text.pt", {"/data.pkl": b"\x80\x02X\x02\x00\x00\x00\xff\xfe."})
    with pytest.raises(pickle.UnpicklingError, match="text.pt: corrupt pickle .*UnicodeDecodeError"):
        load_state_dict(tmp_path / "text.pt")
    bad = np.frombuffer(b"\xff\xfe", dtype=np.uint8)
    containers.write_container(tmp_path / "meta.npz", {"w": np.ones(1)}, None)
    with zipfile.ZipFile(tmp_path / "meta.npz", "a") as z, z.open("__cnnkit__/metadata.npy", "w") as f:
        np.lib.format.write_array(f, bad)
    with pytest.raises(ValueError, match="meta.npz: cnnkit's metadata entry is not UTF-8"):
        load_state_dict(tmp_path / "meta.npz")


def test_deeply_nested_pickle_and_json(tmp_path):
    torch.save({"w": torch.ones(1)}, tmp_path / "good.pt")
    nested = b"\x80\x02" + b"]" * 100_000 + b"a" * 99_999 + b"."  # lists 100,000 deep
    rewrite_zip(tmp_path / "good.pt", tmp_path / "deep.pt", {"/data.pkl": nested})
    with pytest.raises(ValueError, match="deep.pt: holds a list, not a state dict"):
        load_state_dict(tmp_path / "deep.pt")
    containers.write_container(tmp_path / "deep.safetensors", {"w": np.ones(1)}, "[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match="deep.safetensors: cnnkit's metadata is not valid JSON .RecursionError"):
        read_metadata(tmp_path / "deep.safetensors")
    with pytest.raises(ValueError, match="deep.safetensors: cnnkit's metadata is not valid JSON"):
        load_state_dict(tmp_path / "deep.safetensors")


def _edited_checkpoint(tmp_path, edit):
    from cnnkit.models import create

    save(create("lenet5", seed=0), tmp_path / "ok.safetensors", training_state={"epoch": 1, "m": np.ones(2)})
    arrays, text = containers.read_safetensors(tmp_path / "ok.safetensors")
    metadata = json.loads(text)
    edit(metadata, arrays)
    containers.write_container(tmp_path / "bad.safetensors", arrays, json.dumps(metadata))
    return tmp_path / "bad.safetensors"


@pytest.mark.parametrize("edit,message", [
    (lambda m, a: m["keys"].append("ghost.weight"), "metadata field 'keys' names 1 tensor.*'ghost.weight'"),
    (lambda m, a: m.__setitem__("keys", {"a": 1}), "metadata field 'keys' must be a list"),
    (lambda m, a: m["training_state"].__setitem__("m", {"__array__": "gone"}),
     "metadata field 'training_state' is corrupt .KeyError"),
    (lambda m, a: m["training_state"].__setitem__("m", {"__bytes__": "abc"}), "'training_state' is corrupt"),
    (lambda m, a: m["config"].__setitem__("kwargs", [1]), "metadata field 'config' must hold a model name"),
    (lambda m, a: m["config"]["kwargs"].__setitem__("colour", 3), r"'config' \(lenet5\(.*colour.*\) does not build"),
    (lambda m, a: m["config"].__setitem__("name", "resnet9000"), "unknown model 'resnet9000'"),
    (lambda m, a: a.__setitem__("features.0.weight", a["features.0.weight"].reshape(6, 25, 1, 1)),
     "its weights do not fit the model: .*shape mismatch for features.0.weight"),
], ids=["keys-missing", "keys-type", "array-ref", "bytes", "kwargs-type", "kwarg-name", "model-name", "weights"])
def test_corrupt_checkpoint_metadata_names_the_file_and_field(tmp_path, edit, message):
    path = _edited_checkpoint(tmp_path, edit)
    with pytest.raises(ValueError, match=message) as info:
        load_checkpoint(path)
    assert "bad.safetensors" in str(info.value) and "\n" not in str(info.value)


def test_damaged_safetensors_is_one_value_error(tmp_path):
    (tmp_path / "junk.safetensors").write_bytes(b"\xff" * 8 + b"{not json")
    with pytest.raises(ValueError, match="junk.safetensors: not a valid .safetensors file"):
        load_state_dict(tmp_path / "junk.safetensors")
    with pytest.raises(ValueError, match="junk.safetensors: not a valid .safetensors file"):
        read_metadata(tmp_path / "junk.safetensors")


def test_npz_member_that_is_not_npy_is_refused_not_returned_as_bytes(tmp_path):
    with zipfile.ZipFile(tmp_path / "w.npz", "w") as z:
        with z.open("w.npy", "w") as f:
            np.lib.format.write_array(f, np.ones(2))
        z.writestr("notes.txt", b"hello")
    with pytest.raises(ValueError, match="w.npz: member 'notes.txt' is not a .npy array"):
        load_state_dict(tmp_path / "w.npz")


def test_npz_member_header_is_checked_before_allocating(tmp_path):
    with zipfile.ZipFile(tmp_path / "huge.npz", "w") as z:
        header = {"descr": "<f4", "fortran_order": False, "shape": (1 << 38,)}
        buffer = io.BytesIO()
        np.lib.format.write_array_header_1_0(buffer, header)
        z.writestr("w.npy", buffer.getvalue() + bytes(8))
    error, peak = peak_bytes(load_state_dict, tmp_path / "huge.npz")
    assert isinstance(error, ValueError), error
    assert "huge.npz: member 'w.npy' declares shape (274877906944,) of float32 (1099511627776 bytes) but holds 8" \
        in str(error)
    assert peak < MB
    with zipfile.ZipFile(tmp_path / "bomb.npz", "w", compression=zipfile.ZIP_DEFLATED) as z:
        buffer = io.BytesIO()
        np.lib.format.write_array(buffer, np.zeros(2, np.float32))
        z.writestr("w.npy", buffer.getvalue() + bytes(64 * MB))  # a header for 8 bytes, 64 MB behind it
    error, peak = peak_bytes(load_state_dict, tmp_path / "bomb.npz")
    assert isinstance(error, ValueError) and "declares shape (2,) of float32 (8 bytes)" in str(error), error
    assert peak < 4 * MB, peak


def test_npz_round_trip_keeps_fortran_order_and_byte_order(tmp_path):
    f_order = np.asfortranarray(np.arange(6.0).reshape(2, 3))
    big_endian = np.arange(3, dtype=">i4")
    np.savez(tmp_path / "a.npz", f=f_order, b=big_endian)
    state = load_state_dict(tmp_path / "a.npz")
    np.testing.assert_array_equal(state["f"], f_order)
    np.testing.assert_array_equal(state["b"], big_endian)
