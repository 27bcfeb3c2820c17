"""Reading ahead: results of `load(item)` in order, computed by a few threads ahead of use.

Remote blocks cost a round trip each; `ahead` of them in flight hide it, and memory stays bounded by
`ahead` results. Exceptions come back as values (the caller decides: count a bad block, or raise).
"""
from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def read_ahead(load: Callable[[T], R], items: Iterable[T], ahead: int = 8,
               workers: int = 4) -> Iterator[tuple[T, R | Exception]]:
    """(item, load(item) or the Exception it raised), in the order of `items`."""
    def call(item):
        try:
            return load(item)
        except Exception as exc:  # returned, not raised: the caller sees it in order
            return exc

    queue = list(items)
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="logitcache-fetch") as pool:
        pending: deque = deque()
        next_index = 0
        while next_index < len(queue) or pending:
            while next_index < len(queue) and len(pending) < max(1, ahead):
                pending.append((queue[next_index], pool.submit(call, queue[next_index])))
                next_index += 1
            item, future = pending.popleft()
            yield item, future.result()
