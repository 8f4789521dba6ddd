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


def _number(cast, what, ok, rule):
    """An argparse type: ``cast(text)`` that must satisfy ``ok``, else one line naming ``what`` or ``rule``."""

    def parse(text: str):
        try:
            v = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not ok(v):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text}")
        return v

    parse.__name__ = what  # argparse names the type in its own messages
    return parse


#: argparse types: counts of at least 1 (0 and negatives used to fall back to defaults or crash), counts of at
#: least 0, and finite numbers above 0 (learning rates)
positive_int = _number(int, "a positive integer", lambda v: v >= 1, "at least 1")
nonnegative_int = _number(int, "an integer >= 0", lambda v: v >= 0, "0 or more")
positive_float = _number(float, "a number", lambda v: 0 < v < float("inf"), "a finite number above 0")


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
