"""A bounded, thread-safe map that forgets the least recently used entries first.

For what a long-lived web process learns from one request and reuses in the next (symbols, what a release's
index said, rendered answers): whatever its callers send, such a map must stay bounded, in entries and,
where one value can be large, in the weight (bytes) each entry is given.
"""
from __future__ import annotations

import collections
import threading
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable, Hashable, Iterable

K = TypeVar("K", bound="Hashable")
V = TypeVar("V")


class LRU(Generic[K, V]):
    def __init__(self, entries: int, weight: int | None = None) -> None:
        self._kept: collections.OrderedDict[K, tuple[V, int]] = collections.OrderedDict()
        self._entries = entries
        self._weight = weight
        self._weighs = 0
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            found = self._kept.get(key)
            if found is None:
                return None
            self._kept.move_to_end(key)
            return found[0]

    def get_many(self, keys: Iterable[K]) -> dict[K, V]:
        """The entries of ``keys`` that are kept (one lock for all of them)."""
        found = {}
        with self._lock:
            for key in keys:
                entry = self._kept.get(key)
                if entry is not None:
                    self._kept.move_to_end(key)
                    found[key] = entry[0]
        return found

    def get_or(self, key: K, make: Callable[[], V]) -> V:
        """The entry of ``key``, made (outside the lock) and kept the first time; None is a value like any."""
        with self._lock:
            if key in self._kept:
                self._kept.move_to_end(key)
                return self._kept[key][0]
        value = make()
        self.put(key, value)
        return value

    def put(self, key: K, value: V, weight: int = 0) -> None:
        with self._lock:
            self._put(key, value, weight)

    def put_many(self, entries: Iterable[tuple[K, V]]) -> None:
        with self._lock:
            for key, value in entries:
                self._put(key, value, 0)

    def forget(self, which: Callable[[K], bool]) -> None:
        """Drop every entry whose key ``which`` chooses."""
        with self._lock:
            for key in [key for key in self._kept if which(key)]:
                self._weighs -= self._kept.pop(key)[1]

    def _put(self, key: K, value: V, weight: int) -> None:
        if (replaced := self._kept.pop(key, None)) is not None:
            self._weighs -= replaced[1]
        self._kept[key] = (value, weight)
        self._weighs += weight
        while len(self._kept) > self._entries or (self._weight is not None and self._weighs > self._weight):
            self._weighs -= self._kept.popitem(last=False)[1][1]
