"""conch.backends.cudnn: PyTorch's cuDNN flags, accepted so that scripts setting them run unchanged.

conch does not use cuDNN (its convolutions are its own kernels), so ``is_available()`` is False and the flags
are plain attributes with PyTorch's defaults that nothing reads.
"""

allow_tf32 = True
benchmark = False
deterministic = False
enabled = True


def is_available() -> bool:
    return False


def version():
    return None
