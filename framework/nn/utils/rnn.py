"""Variable-length sequences for LSTM/GRU: PackedSequence, pack/pad helpers, as torch.nn.utils.rnn.

A packed batch stores only the real time steps, time-major, longest sequences first::

    data        (Σ lengths, *)   step 0 of every sequence, then step 1 of those longer than 1, ...
    batch_sizes (T,) int64       how many sequences are still running at each step (non-increasing)

LSTM and GRU take a PackedSequence and update at step t only the first ``batch_sizes[t]`` rows, so finished
sequences keep their last state (what ``h_n`` returns) and nothing is computed for padding.

Example::

    seqs = [conch.randn(5, 8), conch.randn(3, 8), conch.randn(2, 8)]
    packed = pack_sequence(seqs)                        # lengths 5, 3, 2
    out, (h, c) = conch.nn.LSTM(8, 16)(packed)           # h (1, 3, 16): each sequence's last real step
    padded, lengths = pad_packed_sequence(out)           # (5, 3, 16) with zeros after each length
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..._backend import to_host, xp_of
from ...tensor import Tensor, cat, stack

__all__ = ["PackedSequence", "pack_padded_sequence", "pad_packed_sequence", "pad_sequence", "pack_sequence"]


class PackedSequence(NamedTuple):
    """``(data, batch_sizes, sorted_indices, unsorted_indices)``: the sorted order puts the longest first;
    ``unsorted_indices`` maps it back to the caller's order (both None when the input was already sorted)."""

    data: Tensor
    batch_sizes: Tensor
    sorted_indices: Tensor | None = None
    unsorted_indices: Tensor | None = None


def _lengths(lengths):
    arr = lengths._data if isinstance(lengths, Tensor) else lengths
    arr = np.asarray(to_host(arr), dtype=np.int64).reshape(-1)
    if arr.size and arr.min() <= 0:
        raise RuntimeError(f"pack_padded_sequence: every length must be positive, got {arr.tolist()}")
    return arr


def pack_padded_sequence(input, lengths, batch_first=False, enforce_sorted=True):
    """Pack a padded batch (T, B, *) ((B, T, *) with ``batch_first``) whose sequence b has ``lengths[b]`` steps.

    ``enforce_sorted=True`` requires lengths in decreasing order; otherwise the batch is sorted here and the
    permutation kept in the PackedSequence. Differentiable in ``input``.
    """
    lens = _lengths(lengths)
    x = input.transpose(0, 1) if batch_first else input
    if len(lens) != x.shape[1]:
        raise RuntimeError(f"pack_padded_sequence: {len(lens)} lengths for a batch of {x.shape[1]} sequences")
    if lens.size and lens.max() > x.shape[0]:
        raise RuntimeError(f"pack_padded_sequence: a length {lens.max()} exceeds the {x.shape[0]} time steps")
    sorted_idx = unsorted_idx = None
    if enforce_sorted:
        if np.any(np.diff(lens) > 0):
            raise RuntimeError(
                f"pack_padded_sequence: `lengths` array must be sorted in decreasing order when `enforce_sorted` "
                f"is True (got {lens.tolist()}); pass enforce_sorted=False to sort the batch here"
            )
    else:
        order = np.argsort(-lens, kind="stable")
        sorted_idx = x._wrap_const(_to_device(x, order))
        unsorted_idx = x._wrap_const(_to_device(x, np.argsort(order)))
        x = x.index_select(1, sorted_idx)
        lens = lens[order]
    batch_sizes = np.array([(lens > t).sum() for t in range(int(lens.max()) if lens.size else 0)], dtype=np.int64)
    data = cat([x[t, : int(bs)] for t, bs in enumerate(batch_sizes)], 0)
    return PackedSequence(data, Tensor._make(batch_sizes), sorted_idx, unsorted_idx)


def _to_device(like, arr):
    return xp_of(like._data).asarray(arr)


def pad_packed_sequence(sequence, batch_first=False, padding_value=0.0, total_length=None):
    """The padded batch (T, B, *) and the lengths (B,) int64 of a PackedSequence, in the caller's order."""
    data, batch_sizes = sequence.data, np.asarray(sequence.batch_sizes._data, dtype=np.int64)
    n_steps = len(batch_sizes)
    if total_length is not None:
        if total_length < n_steps:
            raise ValueError(
                f"Expected total_length to be at least the length of the longest sequence ({n_steps}), got "
                f"{total_length}"
            )
        n_steps = int(total_length)
    b = int(batch_sizes[0]) if len(batch_sizes) else 0
    feat = tuple(data.shape[1:])
    xp_pad = data._wrap_const(_to_device(data, np.full((b,) + feat, padding_value, dtype=data.dtype)))
    rows, off = [], 0
    for t in range(n_steps):
        bs = int(batch_sizes[t]) if t < len(batch_sizes) else 0
        step = data[off : off + bs]
        rows.append(step if bs == b else cat([step, xp_pad[: b - bs]], 0))
        off += bs
    padded = stack(rows, 0)
    lengths = np.array([(batch_sizes > i).sum() for i in range(b)], dtype=np.int64)
    if sequence.unsorted_indices is not None:
        padded = padded.index_select(1, sequence.unsorted_indices)
        lengths = lengths[np.asarray(_host(sequence.unsorted_indices))]
    if batch_first:
        padded = padded.transpose(0, 1)
    return padded, Tensor._make(lengths)


def _host(t):
    return to_host(t._data)


def pad_sequence(sequences, batch_first=False, padding_value=0.0, padding_side="right"):
    """Stack sequences of shapes (L_i, *) into (max L, B, *) ((B, max L, *) with ``batch_first``), padded with
    ``padding_value`` on the right (or the left)."""
    if padding_side not in ("right", "left"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    if not sequences:
        raise RuntimeError("pad_sequence: received an empty list of sequences")
    longest = max(s.shape[0] for s in sequences)
    out = []
    for s in sequences:
        n = longest - s.shape[0]
        if n:
            pad = s._wrap_const(_to_device(s, np.full((n,) + tuple(s.shape[1:]), padding_value, dtype=s.dtype)))
            s = cat([s, pad] if padding_side == "right" else [pad, s], 0)
        out.append(s)
    return stack(out, 0 if batch_first else 1)


def pack_sequence(sequences, enforce_sorted=True):
    """Pack a list of sequences (L_i, *): ``pack_padded_sequence(pad_sequence(sequences), lengths)``."""
    return pack_padded_sequence(pad_sequence(sequences), [s.shape[0] for s in sequences],
                                enforce_sorted=enforce_sorted)  # fmt: skip
