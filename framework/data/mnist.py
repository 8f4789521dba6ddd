"""IDX files (the MNIST format): ``read_idx``/``write_idx`` and an ``MNIST`` dataset over local files."""

from __future__ import annotations

import gzip
import os
import struct

import numpy as np

from ..tensor import Tensor
from .dataset import TensorDataset

__all__ = ["read_idx", "write_idx", "MNIST"]

# IDX type codes (the third byte of the magic number) -> big-endian NumPy dtypes
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IDX_CODES = {np.dtype(v).newbyteorder("="): k for k, v in _IDX_TYPES.items()}


def _open(path):
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gz else open(path, "rb")  # noqa: SIM115


def read_idx(path):
    """Read an IDX file (plain or gzip-compressed, detected from its bytes) into a NumPy array.

    Layout: magic ``0x00 0x00 TYPE NDIM``, NDIM big-endian uint32 sizes, then the big-endian data.
    MNIST's ``train-images-idx3-ubyte.gz`` gives a ``(60000, 28, 28)`` uint8 array.

    Example::

        images = conch.data.read_idx("train-images-idx3-ubyte.gz")
    """
    path = os.fspath(path)
    try:
        with _open(path) as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise ValueError(f"{path}: cannot read IDX file ({e})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic number {data[:4].hex()})")
    dtype, ndim = np.dtype(_IDX_TYPES[data[2]]), data[3]
    if len(data) < 4 + 4 * ndim:
        raise ValueError(f"{path}: IDX file truncated in its header")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    count = int(np.prod(shape, dtype=np.int64))
    start = 4 + 4 * ndim
    if len(data) - start != count * dtype.itemsize:
        raise ValueError(
            f"{path}: IDX file of shape {list(shape)} and type {dtype.name} needs {count * dtype.itemsize} data bytes, "
            f"found {len(data) - start}"
        )
    return np.frombuffer(data, dtype=dtype, count=count, offset=start).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path, array, compress=None):
    """Write a NumPy array as an IDX file (gzip-compressed when ``compress`` or the name ends in ``.gz``)."""
    path = os.fspath(path)
    a = np.asarray(array)
    code = _IDX_CODES.get(a.dtype.newbyteorder("="))
    if code is None:
        raise TypeError(f"write_idx: dtype {a.dtype} has no IDX type code (use uint8, int8, int16, int32, float32/64)")
    body = bytes([0, 0, code, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape)
    body += np.ascontiguousarray(a, dtype=np.dtype(_IDX_TYPES[code])).tobytes()
    if compress is None:
        compress = path.endswith(".gz")
    with gzip.open(path, "wb") if compress else open(path, "wb") as f:
        f.write(body)


class MNIST(TensorDataset):
    """MNIST (or Fashion-MNIST) from the four standard IDX files in ``root`` (``.gz`` or not; no download).

    Samples are ``(image, label)``: float32 ``(1, 28, 28)`` images scaled to [0, 1] (``flatten=True``: ``(784,)``)
    and int64 labels.

    Example::

        train = conch.data.MNIST("~/data/mnist", train=True)
    """

    _FILES = {True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
              False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}  # fmt: skip

    def __init__(self, root, train=True, flatten=False):
        root = os.path.expanduser(os.fspath(root))
        paths = []
        for stem in self._FILES[bool(train)]:
            for cand in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
                p = os.path.join(root, cand)
                if os.path.exists(p):
                    paths.append(p)
                    break
            else:
                raise FileNotFoundError(f"MNIST: {stem}[.gz] not found in {root!r} (conch does not download data)")
        images, labels = read_idx(paths[0]), read_idx(paths[1])
        if images.shape[0] != labels.shape[0]:
            raise ValueError(f"MNIST: {images.shape[0]} images but {labels.shape[0]} labels in {root!r}")
        x = images.astype(np.float32) / np.float32(255.0)
        x = x.reshape(len(x), -1) if flatten else x.reshape(len(x), 1, *x.shape[1:])
        super().__init__(Tensor._make(x), Tensor._make(labels.astype(np.int64)))
