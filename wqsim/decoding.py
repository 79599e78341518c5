"""Bounded decoding of JSON read from Redis, where anyone with write access can put anything.

``json.loads`` recurses once per nesting level and converts integers in time
quadratic in their digits: a 100,000-deep array raises RecursionError and a
5,001-digit integer raises ValueError, neither of which is a JSONDecodeError.
So the text is measured first (size, then nesting depth by an iterative scan
that never recurses), integers are refused by length before they are
converted, and whatever json still raises becomes an OverLimit or a BadText.
"""

from __future__ import annotations

import json
import re
from typing import Any

from .config import Limits

# A JSON string (skipped whole, so brackets inside it do not count) or one bracket. Possessive,
# and an unterminated string runs to the end: every match that starts succeeds, so the scan
# is linear whatever the text (no backtracking, no retry from each later quote).
_STRING_OR_BRACKET = re.compile(r'"(?:[^"\\]|\\.?)*+(?:"|\Z)|[\[\]{}]', re.DOTALL)


class BadText(ValueError):
    """Text that is not what it should be (not UTF-8, not JSON)."""


class OverLimit(ValueError):
    """Text over one of the Limits; the message names the limit."""


def byte_size(text: str) -> int:
    """Size in UTF-8 bytes; text decoded with surrogateescape counts its raw bytes."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogateescape"))


def check_utf8(what: str, text: str) -> None:
    """Refuse text that held bytes which are not UTF-8 (read with surrogateescape, see transport.tolerant)."""
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise BadText(f"{what} is not valid UTF-8 text (byte {exc.start})") from None


def check_size(what: str, text: str, limits: Limits) -> None:
    if len(text) > limits.max_payload_bytes or byte_size(text) > limits.max_payload_bytes:
        raise OverLimit(
            f"{what} is {byte_size(text):,} bytes, over the limit of "
            f"{limits.max_payload_bytes:,} (Limits.max_payload_bytes)"
        )


def nesting_depth(text: str, stop_above: int) -> int:
    """The deepest nesting of JSON arrays and objects in ``text``, without recursion.

    Stops counting once ``stop_above`` is exceeded. Text with fewer brackets
    than that cannot be deeper, so the scan is skipped (two C-speed counts).
    """
    if text.count("[") + text.count("{") <= stop_above:
        return 0
    depth = deepest = 0
    for match in _STRING_OR_BRACKET.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > stop_above:
                    break
        elif token in "]}":
            depth -= 1
    return deepest


def loads(what: str, text: str, limits: Limits) -> Any:
    """Parse JSON ``text`` within ``limits``; BadText or OverLimit (naming ``what``) otherwise."""
    check_utf8(what, text)
    check_size(what, text, limits)
    if nesting_depth(text, limits.max_depth) > limits.max_depth:
        raise OverLimit(f"{what} nests deeper than the limit of {limits.max_depth} (Limits.max_depth)")

    def parse_int(digits: str) -> int:
        if len(digits) - digits.startswith("-") > limits.max_int_digits:
            raise OverLimit(
                f"{what} holds an integer of {len(digits) - digits.startswith('-'):,} digits, "
                f"over the limit of {limits.max_int_digits:,} (Limits.max_int_digits)"
            )
        return int(digits)

    try:
        return json.loads(text, parse_int=parse_int)
    except OverLimit:
        raise
    except json.JSONDecodeError as exc:
        raise BadText(f"{what} is not valid JSON: {exc}") from None
    except (ValueError, RecursionError) as exc:  # not expected within the limits above; never fatal
        raise BadText(f"{what} cannot be decoded: {type(exc).__name__}: {str(exc)[:200]}") from None
