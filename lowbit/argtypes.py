"""argparse value types shared by every ``lowbit`` command, so each flag refuses bad values the
same way (one ``lowbit: error:`` line, exit status 2) before any work starts.

Non-finite floats (``nan``, ``inf``) are refused everywhere: Python's ``float()`` accepts them and
they would silently change results (a length penalty of ``nan`` reorders every beam).
"""

from __future__ import annotations

import argparse
import math

__all__ = ["positive_int", "nonneg_int", "finite_float", "positive_float", "nonneg_float",
           "int_range", "positive_int_list"]


def _int(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, not {text!r}") from None


def _float(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, not {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected {what}, not {text!r}")
    return value


def positive_int(text: str) -> int:
    value = _int(text, "a positive integer")
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, not {text!r}")
    return value


def nonneg_int(text: str) -> int:
    value = _int(text, "a non-negative integer")
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, not {text!r}")
    return value


def finite_float(text: str) -> float:
    return _float(text, "a finite number")


def positive_float(text: str) -> float:
    value = _float(text, "a positive finite number")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive finite number, not {text!r}")
    return value


def nonneg_float(text: str) -> float:
    value = _float(text, "a non-negative finite number")
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative finite number, not {text!r}")
    return value


def int_range(low: int, high: int):
    """An argparse type for integers in ``low..high``."""
    def parse(text: str) -> int:
        value = _int(text, f"an integer in {low}..{high}")
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected an integer in {low}..{high}, not {text!r}")
        return value
    parse.__name__ = f"int_{low}_{high}"
    return parse


def positive_int_list(text: str) -> list[int]:
    """Comma-separated positive integers, e.g. ``4,3,2,1``."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, "
                                         f"not {text!r}") from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, not {text!r}")
    return values
