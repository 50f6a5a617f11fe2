"""The one wait of the tests: poll a predicate until it holds or a deadline passes. A test never sleeps a fixed
time to wait for something; it waits for the thing, with a deadline that fails naming what did not happen."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def eventually(
    predicate: Callable[[], T],
    timeout: float,
    what: str,
    *,
    interval: float = 0.1,
    ignoring: tuple[type[BaseException], ...] = (),
) -> T:
    """Call ``predicate()`` until it returns something truthy, and return that; after ``timeout`` seconds fail
    with an AssertionError saying ``what`` did not happen and the last value seen. An exception of a type in
    ``ignoring`` (say ``httpx.HTTPError`` while a service starts) counts as "not yet"; any other propagates."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            last: object = predicate()
        except ignoring as exc:
            last = exc
        else:
            if last:
                return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s (last: {last!r})")
        time.sleep(interval)
