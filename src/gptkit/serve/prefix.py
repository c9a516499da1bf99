"""Prefix reuse: the KV of recent sequences, so a prompt that starts like one of them (a
system prompt, a chat history resent with each turn) computes only the rest.

Keys and values at a position depend only on the tokens up to it, so the first L positions of
any stored sequence serve every prompt that shares its first L tokens. The store holds
prompts once prefilled and rows once ended (prompt and generated tokens), within a budget of
bytes; the least recently used go first. A sequence another one extends is dropped for it.
An entry holds any number of such tensors of one length: a model's keys and values, and with
speculative decoding its draft's too.
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
    """Sequences' keys and values (each tensor (n_layer, n_head, length, head_dim)), at most
    `budget` bytes, least recently used evicted first."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.used = 0
        self.entries: OrderedDict[tuple[int, ...], tuple[Tensor, ...]] = OrderedDict()
        self.evicted = 0

    @staticmethod
    def _size(kv: tuple[Tensor, ...]) -> int:
        return sum(t.numel() * t.element_size() for t in kv)

    def lookup(self, tokens: list[int]) -> tuple[Tensor, ...] | None:
        """Keys and values of the longest stored prefix of `tokens` (None: none)."""
        best, length = None, 0
        for key in self.entries:
            shared = _common(key, tokens)
            if shared > length:
                best, length = key, shared
        if best is None:
            return None
        self.entries.move_to_end(best)
        return tuple(t[:, :, :length] for t in self.entries[best])

    def add(self, tokens: list[int], *kv: Tensor) -> None:
        """Keep the KV of `tokens` (their first `length` positions, the tensors' dim 2)."""
        key = tuple(tokens[: kv[0].size(2)])
        size = self._size(kv)
        if not key or size > self.budget:
            return
        for other in list(self.entries):
            if other[: len(key)] == key:  # already held whole (perhaps by a longer one)
                self.entries.move_to_end(other)
                return
            if key[: len(other)] == other:  # this one extends it
                self._remove(other)
        self.entries[key] = kv
        self.used += size
        while self.used > self.budget:
            self._remove(next(iter(self.entries)))
            self.evicted += 1

    def _remove(self, key: tuple[int, ...]) -> None:
        self.used -= self._size(self.entries.pop(key))
