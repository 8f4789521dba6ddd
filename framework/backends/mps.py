"""conch.backends.mps: Apple's Metal backend, which conch does not have (``is_available()`` is False)."""


def is_available() -> bool:
    return False


def is_built() -> bool:
    return False
