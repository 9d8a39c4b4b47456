"""Read a PyTorch state dict saved in the legacy (pre-zip) format, without torch.

``torch.save(..., _use_new_zipfile_serialization=False)`` (and every
``torch.save`` before PyTorch 1.6) writes one flat byte stream::

    pickle   magic number 0x1950a86a20f9469cfc6c
    pickle   protocol version 1001
    pickle   sys info {"protocol_version", "little_endian", "type_sizes"}
    pickle   the object itself (here: an OrderedDict name -> tensor)
    pickle   list of storage keys (str), in the order their data follows
    per key  8-byte little-endian element count, then the raw element bytes

Inside the object pickle a tensor is
``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`` and
its storage is a persistent id
``("storage", torch.FloatStorage, key, location, numel, view_metadata)``:
the data is not in the pickle but in the trailing records, found by key.
``view_metadata`` is ``None`` or ``(view_key, offset, size)`` for a storage
that is a slice of another one (old PyTorch versions had storage views;
newer ones always write None).

Unpickling runs code named by the file, so a checkpoint from the internet is
a program.  This reader resolves only an explicit allow-list of globals
(``collections.OrderedDict``, the two tensor rebuild functions, the
``torch.*Storage`` types as dtype markers) and refuses everything else with
:class:`UnsafePickleError` before anything is called.  Tensors come back as
owned, C-contiguous numpy arrays.

The zip format of PyTorch >= 1.6 is not supported; it is rejected with a
``ValueError`` that says so.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import pickle
from collections.abc import Mapping
from typing import BinaryIO

import numpy as np

__all__ = ["UnsafePickleError", "read_legacy_state_dict"]

logger = logging.getLogger(__name__)

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001
_ZIP_SIGNATURE = b"PK\x03\x04"
_COUNT_BYTES = 8


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle asked for a global that is not on the allow-list."""


@dataclasses.dataclass(frozen=True)
class _StorageType:
    """Stand-in for a ``torch.*Storage`` class: only its element type matters."""

    name: str
    dtype: np.dtype


# Only element types numpy can hold; BFloat16Storage and the quantised ones are
# refused like any other unknown global rather than misread.
_STORAGE_DTYPES = {
    "DoubleStorage": "f8",
    "FloatStorage": "f4",
    "HalfStorage": "f2",
    "LongStorage": "i8",
    "IntStorage": "i4",
    "ShortStorage": "i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
}


@dataclasses.dataclass(frozen=True)
class _StorageRef:
    """A storage named in the pickle, whose bytes follow it in the file."""

    key: str
    storage_type: _StorageType
    numel: int
    view_offset: int
    view_numel: int


@dataclasses.dataclass(frozen=True)
class _TensorRef:
    """A tensor as the pickle describes it: a strided window on a storage."""

    storage: _StorageRef
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_int_tuple(value) -> bool:
    return isinstance(value, tuple) and all(_is_int(v) for v in value)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    """Safe replacement for ``torch._utils._rebuild_tensor_v2``."""
    if not isinstance(storage, _StorageRef):
        raise ValueError(f"a tensor refers to {type(storage).__name__!r}, not a storage")
    if not (_is_int(storage_offset) and _is_int_tuple(size) and _is_int_tuple(stride)):
        raise ValueError(f"a tensor has a malformed offset/size/stride: {storage_offset!r}, {size!r}, {stride!r}")
    if len(size) != len(stride):
        raise ValueError(f"a tensor has size {size} but stride {stride}")
    return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    """Safe replacement for ``torch._utils._rebuild_parameter``: a parameter is its data."""
    if not isinstance(data, _TensorRef):
        raise ValueError(f"a parameter wraps {type(data).__name__!r}, not a tensor")
    return data


_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(name, np.dtype(code)) for name, code in _STORAGE_DTYPES.items()},
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only allow-listed globals and storage ids.

    Parameters
    ----------
    file : binary file object
        Positioned at the start of one pickle.
    allow_globals : bool
        False for the header pickles, which hold only numbers and dicts.
    """

    def __init__(self, file: BinaryIO, *, allow_globals: bool):
        super().__init__(file)
        self._allow_globals = allow_globals
        self.storages: dict[str, _StorageRef] = {}

    def find_class(self, module, name):
        target = _ALLOWED_GLOBALS.get((module, name)) if self._allow_globals else None
        if target is None:
            raise UnsafePickleError(
                f"refused to load global {module}.{name}: only "
                f"{sorted(f'{m}.{n}' for m, n in _ALLOWED_GLOBALS)} may appear "
                "in a state dict"
            )
        return target

    def persistent_load(self, pid):
        if not self._allow_globals:
            raise ValueError(f"unexpected persistent id {pid!r} in a header pickle")
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
            raise ValueError(f"unsupported persistent id {pid!r}")
        _, storage_type, key, location, numel, view = pid
        if not (
            isinstance(storage_type, _StorageType)
            and isinstance(key, str)
            and isinstance(location, str)
            and _is_int(numel)
            and numel >= 0
        ):
            raise ValueError(f"malformed storage id {pid!r}")
        if view is None:
            view_offset, view_numel = 0, numel
        elif (
            isinstance(view, tuple)
            and len(view) == 3
            and _is_int(view[1])
            and _is_int(view[2])
            and 0 <= view[1]
            and view[1] + view[2] <= numel
        ):
            view_offset, view_numel = view[1], view[2]
        else:
            raise ValueError(f"malformed or out-of-range storage view {view!r} in {pid!r}")
        known = self.storages.get(key)
        if known is not None and (known.storage_type, known.numel) != (storage_type, numel):
            raise ValueError(
                f"storage {key!r} is declared twice, as {known.storage_type.name}[{known.numel}] "
                f"and as {storage_type.name}[{numel}]"
            )
        self.storages[key] = _StorageRef(key, storage_type, numel, 0, numel)
        return _StorageRef(key, storage_type, numel, view_offset, view_numel)


# What malformed pickle bytes can raise besides UnpicklingError: a REDUCE or
# BUILD applied to the wrong arguments, a bad memo index, a short read.
_MALFORMED_PICKLE_ERRORS = (
    pickle.UnpicklingError,
    EOFError,
    ValueError,
    TypeError,
    AttributeError,
    IndexError,
    KeyError,
    OverflowError,
    MemoryError,
    UnicodeDecodeError,
)


def _load_pickle(file: BinaryIO, path: os.PathLike, what: str, *, allow_globals: bool):
    """Unpickle one record; return (object, unpickler)."""
    unpickler = _RestrictedUnpickler(file, allow_globals=allow_globals)
    try:
        return unpickler.load(), unpickler
    except UnsafePickleError:
        raise
    except _MALFORMED_PICKLE_ERRORS as error:
        raise ValueError(
            f"{path} is not a readable legacy PyTorch file: the {what} pickle at byte "
            f"{file.tell()} is truncated or malformed ({type(error).__name__}: {error})"
        ) from error


def _read_storages(
    file: BinaryIO, path: os.PathLike, keys: list[str], storages: dict[str, _StorageRef], byteorder: str
) -> dict[str, np.ndarray]:
    """Read the per-storage records that follow the pickles."""
    missing = sorted(set(storages) - set(keys))
    if missing:
        raise ValueError(f"{path}: storages {missing} are used by tensors but have no data")
    data = {}
    for key in keys:
        ref = storages.get(key)
        if ref is None:
            raise ValueError(f"{path}: storage {key!r} has data but no tensor declares its type")
        header = file.read(_COUNT_BYTES)
        if len(header) != _COUNT_BYTES:
            raise ValueError(
                f"{path} is truncated: it ends after {len(header)} of {_COUNT_BYTES} bytes "
                f"of the element count of storage {key!r}"
            )
        count = int.from_bytes(header, "little", signed=True)
        if count != ref.numel:
            raise ValueError(f"{path}: storage {key!r} holds {count} elements but the state dict declares {ref.numel}")
        dtype = ref.storage_type.dtype.newbyteorder(byteorder)
        nbytes = count * dtype.itemsize
        raw = file.read(nbytes)
        if len(raw) != nbytes:
            raise ValueError(f"{path} is truncated: it ends after {len(raw)} of {nbytes} bytes of storage {key!r}")
        data[key] = np.frombuffer(raw, dtype=dtype)
    return data


def _materialise(name: str, ref: _TensorRef, data: dict[str, np.ndarray]) -> np.ndarray:
    """Copy one tensor's strided window out of its storage."""
    flat = data[ref.storage.key][ref.storage.view_offset :][: ref.storage.view_numel]
    if ref.offset < 0 or any(s < 0 for s in ref.stride) or any(n < 0 for n in ref.size):
        raise ValueError(
            f"tensor {name!r} has a negative offset, size or stride: "
            f"offset={ref.offset}, size={ref.size}, stride={ref.stride}"
        )
    if 0 in ref.size:
        return np.zeros(ref.size, dtype=flat.dtype.newbyteorder("="))
    last = ref.offset + sum((n - 1) * s for n, s in zip(ref.size, ref.stride))
    if last >= flat.size:
        raise ValueError(
            f"tensor {name!r} (offset={ref.offset}, size={ref.size}, stride={ref.stride}) "
            f"reaches element {last} of a storage of {flat.size}"
        )
    window = np.lib.stride_tricks.as_strided(
        flat[ref.offset :],
        shape=ref.size,
        strides=tuple(s * flat.itemsize for s in ref.stride),
        writeable=False,
    )
    # A copy, so no array keeps the whole file buffer alive or aliases another.
    return np.array(window, dtype=flat.dtype.newbyteorder("="), order="C", copy=True)


def read_legacy_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a state dict saved by ``torch.save`` in the legacy format.

    Parameters
    ----------
    path : str or path-like
        A ``.pth``/``.pt`` file written without the zip container.

    Returns
    -------
    dict of str to ndarray
        Parameter and buffer names, in file order, mapped to owned,
        C-contiguous arrays with the tensors' shapes and dtypes
        (``FloatStorage`` -> float32, ``LongStorage`` -> int64, ...).

    Raises
    ------
    FileNotFoundError
        If ``path`` is not a file.
    UnsafePickleError
        If the file names any global outside the allow-list (a model
        object, ``os.system``, ...).  Nothing named is called.
    ValueError
        If the file is a zip-format checkpoint, has a wrong magic number or
        protocol version, is truncated, has trailing bytes, or is not a flat
        mapping of names to tensors.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No legacy PyTorch file at {path!r}.")
    with open(path, "rb") as file:
        if file.read(len(_ZIP_SIGNATURE)) == _ZIP_SIGNATURE:
            raise ValueError(
                f"{path} is a zip-format PyTorch checkpoint; only the legacy (pre-zip) "
                "format is supported. Re-save it with "
                "torch.save(obj, f, _use_new_zipfile_serialization=False)."
            )
        file.seek(0)
        magic, _ = _load_pickle(file, path, "magic number", allow_globals=False)
        if magic != MAGIC_NUMBER:
            raise ValueError(
                f"{path} is not a legacy PyTorch file: wrong magic number {magic!r}, expected {MAGIC_NUMBER:#x}"
            )
        version, _ = _load_pickle(file, path, "protocol version", allow_globals=False)
        if version != PROTOCOL_VERSION:
            raise ValueError(f"{path}: unsupported legacy protocol version {version!r}, expected {PROTOCOL_VERSION}")
        sys_info, _ = _load_pickle(file, path, "sys info", allow_globals=False)
        if not (isinstance(sys_info, dict) and isinstance(sys_info.get("little_endian"), bool)):
            raise ValueError(f"{path}: malformed sys info {sys_info!r}")
        byteorder = "<" if sys_info["little_endian"] else ">"
        state, unpickler = _load_pickle(file, path, "state dict", allow_globals=True)
        keys, _ = _load_pickle(file, path, "storage key list", allow_globals=False)
        if not (isinstance(keys, list) and all(isinstance(k, str) for k in keys) and len(set(keys)) == len(keys)):
            raise ValueError(f"{path}: the storage key list is malformed: {keys!r:.200}")
        data = _read_storages(file, path, keys, unpickler.storages, byteorder)
        trailing = len(file.read())
        if trailing:
            raise ValueError(f"{path}: {trailing} unexpected bytes after the last storage")

    if not isinstance(state, Mapping):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict")
    arrays = {}
    for name, ref in state.items():
        if not (isinstance(name, str) and isinstance(ref, _TensorRef)):
            raise ValueError(
                f"{path}: expected a flat mapping of names to tensors, found {name!r} -> {type(ref).__name__}"
            )
        arrays[name] = _materialise(name, ref, data)
    logger.debug("Read %d tensors (%d values) from %s", len(arrays), sum(a.size for a in arrays.values()), path)
    return arrays
