"""argparse ``type=`` converters for the CLI's numbers, built on wqsim.config's rules.

One rule per kind of number, shared with the config dataclasses, so a value is
refused the same way whether it comes from a flag or from code: negative, NaN
and infinite values fail at parse time, in one line naming the flag.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TypeVar

from .config import check_int_at_least, check_non_negative, check_positive, check_probability

T = TypeVar("T")


def _converter(
    name: str, parse: Callable[[str], T], check: Callable[[str, T], object], kind: str
) -> Callable[[str], T]:
    def convert(text: str) -> T:
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {kind} value: {text!r}") from None
        try:
            check(name, value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return value

    convert.__name__ = kind
    return convert


def positive_int(name: str) -> Callable[[str], int]:
    """An integer >= 1 (a count of tasks, workers, attempts)."""
    return _converter(name, int, lambda n, v: check_int_at_least(n, v, 1), "int")


def non_negative_int(name: str) -> Callable[[str], int]:
    """An integer >= 0 (a count where none is allowed: cores, where 0 means one per worker)."""
    return _converter(name, int, lambda n, v: check_int_at_least(n, v, 0), "int")


def positive_float(name: str) -> Callable[[str], float]:
    """A positive, finite number (a lease, an interval, a timeout)."""
    return _converter(name, float, check_positive, "float")


def non_negative_float(name: str) -> Callable[[str], float]:
    """A finite number >= 0 (a task duration)."""
    return _converter(name, float, check_non_negative, "float")


def probability(name: str) -> Callable[[str], float]:
    """A number between 0 and 1."""
    return _converter(name, float, check_probability, "float")
