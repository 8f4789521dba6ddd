"""Shared pieces of the ``conch`` command: the expected-error type, argparse value types, the error printer."""

from __future__ import annotations

import argparse
import difflib
import os
import re
import sys


class CommandError(Exception):
    """An expected condition the command reports in a line or two (no traceback), with its exit status.

    ``message`` says what happened and what to do; ``status`` is 1 for runtime conditions (no GPU, missing or
    corrupt file) and 130 for an interrupted run.
    """

    def __init__(self, message: str, status: int = 1):
        super().__init__(message)
        self.status = status


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1 (0 and negatives used to fall back to defaults or crash)."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {v}")
    return v


def nonnegative_int(text: str) -> int:
    """argparse type: an integer of at least 0."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {v}")
    return v


def positive_float(text: str) -> float:
    """argparse type: a finite number above 0 (learning rates)."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not v > 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, got {text}")
    return v


def existing_file(text: str) -> str:
    """argparse type: a path to a readable file."""
    if not os.path.exists(text):
        raise argparse.ArgumentTypeError(f"no such file: {text}")
    if os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text} is a folder; give a text file")
    return text


def device_name(text: str) -> str:
    """argparse type: ``cpu``, ``cuda`` or ``cuda:N`` (whether that GPU exists is checked when the run starts)."""
    t = text.strip().lower()
    if t == "cpu" or re.fullmatch(r"cuda(:\d+)?", t):
        return t
    raise argparse.ArgumentTypeError(f"unknown device {text!r}: use cpu, cuda or cuda:N")


def unrecognized(parser: argparse.ArgumentParser, extras: list) -> None:
    """Fail with ``parser``'s usage, naming the closest known option for each unknown one (exits 2)."""
    known = [s for a in parser._actions for s in a.option_strings]
    parts = []
    for e in extras:
        close = difflib.get_close_matches(e.split("=")[0], known, n=1) if e.startswith("-") else []
        parts.append(f"{e} (did you mean {close[0]}?)" if close else e)
    parser.error("unrecognized arguments: " + " ".join(parts))


def report(message: str) -> None:
    """Print ``conch: error: message`` to stderr."""
    print(f"conch: error: {message}", file=sys.stderr, flush=True)


def debug_wanted(argv) -> bool:
    """Full tracebacks: ``--traceback`` anywhere on the command line, or ``CONCH_DEBUG`` set to a true value."""
    return "--traceback" in argv or os.environ.get("CONCH_DEBUG", "").lower() not in ("", "0", "false", "no")


def quiet_broken_pipe() -> int:
    """``conch info | head -2``: the reader left; point stdout at /dev/null so the exit flush is silent."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout without a file descriptor (captured in tests)
        pass
    return 141  # 128 + SIGPIPE, what a C tool killed by the broken pipe reports
