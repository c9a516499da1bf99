"""Prefix reuse: the KV of recent sequences, so a prompt that starts like one of them (a
system prompt, a chat history resent with each turn) computes only the rest.

Keys and values at a position depend only on the tokens up to it, so the first L positions of
any stored sequence serve every prompt that shares its first L tokens. The store holds
prompts once prefilled and rows once ended (prompt and generated tokens), within a budget of
bytes; the least recently used go first. A sequence another one extends is dropped for it.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor


def _common(a: tuple[int, ...], b: list[int]) -> int:
    """How many leading tokens `a` and `b` share."""
    n = min(len(a), len(b))
    if a[:n] == tuple(b[:n]):
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo], a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[:mid] == tuple(b[:mid]):
            lo = mid
        else:
            hi = mid
    return lo


class PrefixStore:
    """Sequences' keys and values (n_layer, n_head, length, head_dim), at most `budget`
    bytes, least recently used evicted first."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.used = 0
        self.entries: OrderedDict[tuple[int, ...], tuple[Tensor, Tensor]] = OrderedDict()
        self.evicted = 0

    @staticmethod
    def _size(k: Tensor, v: Tensor) -> int:
        return k.numel() * k.element_size() + v.numel() * v.element_size()

    def lookup(self, tokens: list[int]) -> tuple[Tensor, Tensor] | None:
        """Keys and values of the longest stored prefix of `tokens` (None: none)."""
        best, length = None, 0
        for key in self.entries:
            shared = _common(key, tokens)
            if shared > length:
                best, length = key, shared
        if best is None:
            return None
        self.entries.move_to_end(best)
        k, v = self.entries[best]
        return k[:, :, :length], v[:, :, :length]

    def add(self, tokens: list[int], k: Tensor, v: Tensor) -> None:
        """Keep the KV of `tokens` (their first k.size(2) positions)."""
        key = tuple(tokens[: k.size(2)])
        size = self._size(k, v)
        if not key or size > self.budget:
            return
        for other in list(self.entries):
            if other[: len(key)] == key:  # already held whole (perhaps by a longer one)
                self.entries.move_to_end(other)
                return
            if key[: len(other)] == other:  # this one extends it
                self._remove(other)
        self.entries[key] = (k, v)
        self.used += size
        while self.used > self.budget:
            self._remove(next(iter(self.entries)))
            self.evicted += 1

    def _remove(self, key: tuple[int, ...]) -> None:
        k, v = self.entries.pop(key)
        self.used -= self._size(k, v)
