"""The embedded default data set: scikit-learn's bundled 8x8 handwritten digits (1797 images, no download)."""

from __future__ import annotations

import importlib.util
import os

import numpy as np

from .. import _dtype as D
from ..tensor import Tensor
from .dataset import TensorDataset

__all__ = ["load_digits"]

_cache = {}


def _digits_arrays():
    """(images (1797, 64) float64 in 0..16, labels (1797,) int64), read from scikit-learn's data folder."""
    if "digits" not in _cache:
        spec = importlib.util.find_spec("sklearn")
        path = None
        if spec is not None and spec.submodule_search_locations:
            path = os.path.join(list(spec.submodule_search_locations)[0], "datasets", "data", "digits.csv.gz")
        if path is not None and os.path.exists(path):
            # reading the CSV directly avoids importing scikit-learn (about a second)
            data = np.loadtxt(path, delimiter=",")
            x, y = data[:, :-1], data[:, -1].astype(np.int64)
        else:
            try:
                from sklearn.datasets import load_digits as _sk_load
            except ImportError:
                raise ImportError(
                    "conch.data.load_digits reads the digits that ship with scikit-learn: pip install scikit-learn"
                ) from None
            d = _sk_load()
            x, y = d.data.astype(np.float64), d.target.astype(np.int64)
        _cache["digits"] = (x, y)
    return _cache["digits"]


def load_digits(split=None, *, test_size=360, seed=0, flatten=True, normalize=True, dtype=None):
    """The UCI 8x8 digits bundled with scikit-learn, with a fixed train/test split.

    Args:
        split: ``None`` returns ``(train, test)``; ``"train"`` or ``"test"`` returns that one; ``"all"``
            returns every sample in file order.
        test_size: samples in the test split (default 360 of 1797, i.e. 20%; train gets 1437).
        seed: the split's permutation seed (fixed, so the split is the same on every machine).
        flatten: images as ``(64,)`` vectors, else ``(1, 8, 8)`` (for a CNN).
        normalize: scale pixels from 0..16 to [0, 1].
        dtype: image dtype (default float32).

    Returns :class:`TensorDataset`\\ s of ``(image, label)`` with int64 labels 0..9.

    Example::

        train, test = conch.data.load_digits()
        x, y = train.tensors                     # (1437, 64) float32, (1437,) int64
    """
    x, y = _digits_arrays()
    dt = D.float32 if dtype is None else D.as_dtype(dtype)
    imgs = (x / 16.0 if normalize else x).astype(dt)
    imgs = imgs if flatten else imgs.reshape(-1, 1, 8, 8)
    n = len(y)
    if not 0 < test_size < n:
        raise ValueError(f"test_size must be between 1 and {n - 1}, got {test_size}")
    if split == "all":
        return TensorDataset(Tensor._make(imgs.copy()), Tensor._make(y.copy()))
    perm = np.random.default_rng(seed).permutation(n)
    test_idx, train_idx = np.sort(perm[:test_size]), np.sort(perm[test_size:])
    train = TensorDataset(Tensor._make(imgs[train_idx]), Tensor._make(y[train_idx]))
    test = TensorDataset(Tensor._make(imgs[test_idx]), Tensor._make(y[test_idx]))
    if split is None:
        return train, test
    if split == "train":
        return train
    if split == "test":
        return test
    raise ValueError(f"split must be None, 'train', 'test' or 'all', got {split!r}")
