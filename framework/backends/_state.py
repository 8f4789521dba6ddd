"""The TF32 switch itself, in a module of its own so that ``backends`` and ``backends.cuda`` share one list."""

_tf32 = [True]  # read on every matmul: a one-element list, not an object attribute
