"""Reading a Redis stream in pages, and its entry ids as comparable tuples.

The audit and the listener both read the events stream from a point on; an
unbounded XRANGE on a million-entry stream would build one huge reply, so
both go page by page through :func:`entries`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import cast

import redis

EntryId = tuple[int, int]  # a stream entry id "<ms>-<seq>", comparable
Entry = tuple[str, dict[str, str]]  # (entry id, fields) as a decoding client returns them

ENTRY_ID = re.compile(r"^(\d+)-(\d+)$")
PAGE = 1000  # entries read per XRANGE


def parse_entry_id(text: str) -> EntryId:
    """ "1700000000000-3" -> (1700000000000, 3); "0" -> (0, 0)."""
    if text == "0":
        return (0, 0)
    match = ENTRY_ID.match(text)
    if match is None:
        raise ValueError(f"not a stream entry id: {text!r} (expected '<ms>-<seq>', or '0')")
    return (int(match[1]), int(match[2]))


def entry_after(entry: EntryId) -> str:
    """The smallest id after ``entry``, for an XRANGE that excludes it ('(' needs Redis 6.2)."""
    return f"{entry[0]}-{entry[1] + 1}"


def entries(
    client: redis.Redis, stream: str, start: str = "-", end: str = "+", page: int | None = None
) -> Iterator[Entry]:
    """The entries of ``stream`` from ``start`` to ``end`` (both included), oldest first, read ``page`` at a time.

    ``client`` must decode responses (every wqsim client does).
    """
    page = page or PAGE
    while True:
        batch = cast(list[Entry], client.xrange(stream, min=start, max=end, count=page))
        yield from batch
        if len(batch) < page or batch[-1][0] == end:
            return
        start = entry_after(parse_entry_id(batch[-1][0]))
