"""Tensors as raw ZeroMQ frames: a header entry (name, dtype, shape, nbytes) plus the bytes.

Why raw frames: pickling tensors would both copy them and let a peer run code on us. A tensor is sent
as a byte view of its own storage (``copy=False``), and rebuilt on receipt with ``torch.frombuffer``
over the received frame, so the tensor *aliases* the ZeroMQ message buffer instead of copying it.

The one exception: libzmq's zero-copy receive may place a small frame at an address that is not a
multiple of the element size. Such a tensor is copied into aligned memory (counted in
``FRAME_STATS.copied``) because misaligned tensors are unsafe for some kernels.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import msgspec
import torch

__all__ = [
    "DTYPES",
    "FRAME_STATS",
    "FrameError",
    "FrameStats",
    "TensorMeta",
    "tensor_from_frame",
    "tensor_to_frame",
]


class FrameError(ValueError):
    """A tensor frame does not match its header (size, dtype, shape, limits)."""


class TensorMeta(msgspec.Struct, array_like=True, forbid_unknown_fields=True, frozen=True, gc=False):
    """Header entry of one tensor frame."""

    name: str
    dtype: str
    """Key of `DTYPES`, e.g. ``"bfloat16"``."""
    shape: list[int]
    nbytes: int


DTYPES: dict[str, torch.dtype] = {
    "bool": torch.bool,
    "uint8": torch.uint8,
    "int8": torch.int8,
    "int16": torch.int16,
    "int32": torch.int32,
    "int64": torch.int64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
}
"""Dtypes allowed on the wire; anything else is rejected by name, never interpreted."""

_NAMES: dict[torch.dtype, str] = {v: k for k, v in DTYPES.items()}

MAX_DIMS = 16
"""Most dimensions a received tensor may have (our largest has 4)."""


class FrameStats:
    """Process-wide counters: how many received tensors aliased their frame and how many were copied."""

    def __init__(self) -> None:
        self.aliased = 0
        self.copied = 0


FRAME_STATS = FrameStats()


def dtype_name(dtype: torch.dtype) -> str:
    """Wire name of a torch dtype; raises `FrameError` for dtypes we do not send."""
    try:
        return _NAMES[dtype]
    except KeyError:
        raise FrameError(f"dtype {dtype} cannot travel as a frame (allowed: {sorted(DTYPES)})") from None


def tensor_to_frame(name: str, tensor: torch.Tensor) -> tuple[TensorMeta, memoryview]:
    """Header entry and a byte view of ``tensor``'s memory (no copy for contiguous CPU tensors).

    The caller must not modify the tensor until the frame has been sent: the view aliases it.
    """
    if tensor.device.type != "cpu":
        tensor = tensor.cpu()
    if not tensor.is_contiguous():
        tensor = tensor.contiguous()
    meta = TensorMeta(name, dtype_name(tensor.dtype), list(tensor.shape), tensor.numel() * tensor.element_size())
    if meta.nbytes == 0:
        return meta, memoryview(b"")
    flat = tensor.detach().reshape(-1)
    if flat.dtype is torch.bool:
        flat = flat.view(torch.uint8)
    raw = flat.view(torch.uint8).numpy()  # numpy has no bfloat16: view the bytes
    return meta, memoryview(raw)


def _buffer(frame: Any) -> memoryview:
    buf = getattr(frame, "buffer", None)  # zmq.Frame: its own message memory, no copy
    return buf if buf is not None else memoryview(frame)


def tensor_from_frame(meta: TensorMeta, frame: Any, max_frame_bytes: int) -> torch.Tensor:
    """Rebuild a tensor over the frame's memory after checking it against its header.

    Raises `FrameError` naming the tensor when dtype, shape, byte count or size limit disagree.
    """
    dtype = DTYPES.get(meta.dtype)
    if dtype is None:
        raise FrameError(f"tensor {meta.name!r}: unknown dtype {meta.dtype!r} (allowed: {sorted(DTYPES)})")
    if len(meta.shape) > MAX_DIMS:
        raise FrameError(f"tensor {meta.name!r}: {len(meta.shape)} dimensions exceed the limit of {MAX_DIMS}")
    if any(d < 0 for d in meta.shape):
        raise FrameError(f"tensor {meta.name!r}: negative dimension in shape {meta.shape}")
    itemsize = torch.empty((), dtype=dtype).element_size()
    expected = math.prod(meta.shape) * itemsize
    # The product of the non-zero dimensions must fit the limit too: a zero-byte tensor of shape
    # [2**62, 2**62, 0] has nbytes 0 but overflows torch's storage-size arithmetic.
    if math.prod(d for d in meta.shape if d) * itemsize > max_frame_bytes:
        raise FrameError(f"tensor {meta.name!r}: shape {meta.shape} of {meta.dtype} exceeds the limit of "
                         f"{max_frame_bytes} bytes")
    if meta.nbytes != expected:
        raise FrameError(f"tensor {meta.name!r}: header says {meta.nbytes} bytes but shape {meta.shape} "
                         f"of {meta.dtype} needs {expected}")
    buf = _buffer(frame)
    if buf.nbytes > max_frame_bytes:
        raise FrameError(f"tensor {meta.name!r}: frame of {buf.nbytes} bytes exceeds the limit of "
                         f"{max_frame_bytes} bytes")
    if buf.nbytes != expected:
        raise FrameError(f"tensor {meta.name!r}: frame has {buf.nbytes} bytes, header says {expected}")
    if expected == 0:
        return torch.empty(meta.shape, dtype=dtype)
    with warnings.catch_warnings():
        # bytes objects are read-only; received zmq frames are writable. Either way no copy here.
        warnings.simplefilter("ignore", UserWarning)
        raw = torch.frombuffer(buf, dtype=torch.uint8)
    if raw.data_ptr() % itemsize:
        FRAME_STATS.copied += 1
        raw = raw.clone()  # fresh allocations are aligned
    else:
        FRAME_STATS.aliased += 1
    return raw.view(dtype).view(meta.shape)
