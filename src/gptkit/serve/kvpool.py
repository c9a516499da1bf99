"""The server's KV memory: one preallocated slab of `rows` slots x block_size positions.

Each running row of the continuous batcher owns a slot; its keys and values sit at its own
positions 0, 1, ... whatever the other rows hold, so rows of any length share one decoding
forward. Running rows are kept in slots 0..R-1 (a leaving row's slot takes the last row's
KV), so a step's batch is a view of the slab, never a gather. The slab's size is fixed when
the server starts: rows x the KV bytes of one row of full context (`gptkit info` shows those,
GET /health the pool's).
"""

from __future__ import annotations

import torch
from torch import Tensor

from gptkit.model import GPT, KVCache, attention_rule

# What one more attention call costs, in key and value bytes read in the same time: about
# 20 us of dispatch against ~20 GB/s of reading on this project's CPU. A decoding step
# attends row by row when the keys it saves (each row reading its own instead of the
# longest row's) outweigh a call per row: on the default recipe's model one masked call
# stays faster; GPT-2 small's step of 16 rows at mixed lengths ran 1.35x as fast row by
# row (`benchmarks.pool_attention`, docs/results.md).
ROW_CALL_BYTES = 400_000


class KVPool:
    """Keys and values of `rows` slots of up to block_size positions each (the model's
    dtype and device)."""

    def __init__(self, model: GPT, rows: int) -> None:
        c = model.config
        weight = model.transformer.wte.weight
        shape = (c.n_layer, rows, c.n_head, c.block_size, c.n_embd // c.n_head)
        self.k = torch.zeros(shape, device=weight.device, dtype=weight.dtype)
        self.v = torch.zeros(shape, device=weight.device, dtype=weight.dtype)
        self.rows = rows
        self.positions = c.block_size
        self.bytes = 2 * self.k.numel() * self.k.element_size()

    def view(self, first: int, positions: list[int], tokens: int) -> SlotView:
        """The cache one forward call writes: slots first.. first + len(positions), each
        row's `tokens` new positions starting at its own `positions[i]`."""
        return SlotView(self, first, positions, tokens)

    def move(self, source: int, target: int, length: int) -> None:
        """Slot `target` takes the first `length` positions of slot `source`."""
        if source != target and length > 0:
            self.k[:, target, :, :length] = self.k[:, source, :, :length]
            self.v[:, target, :, :length] = self.v[:, source, :, :length]

    def read(self, slot: int, length: int) -> tuple[Tensor, Tensor]:
        """A copy of the first `length` positions of `slot` (n_layer, n_head, length, hd)."""
        return (self.k[:, slot, :, :length].clone(), self.v[:, slot, :, :length].clone())

    def write(self, slot: int, k: Tensor, v: Tensor) -> None:
        """Put `k`, `v` (as `read` returns them) at the first positions of `slot`."""
        length = k.size(2)
        self.k[:, slot, :, :length] = k
        self.v[:, slot, :, :length] = v


class SlotView(KVCache):
    """One forward call's window on the pool: rows of consecutive slots, each at its own
    position. It supplies the attention mask (key j visible to a query iff j <= the query's
    position in its row) and the position ids itself, and writes the new keys and values
    at each row's positions; keys are cut to the furthest row's.

    A decoding step (one token per row) of rows at positions of their own attends row by
    row, each over its own keys, where that reads enough fewer bytes (`ROW_CALL_BYTES`).

    Rows at different positions may take several tokens each (speculative decoding checks
    K + 1 per row): row i writes positions positions[i], positions[i] + 1, ..., cut at the
    last position of the slot. A row that only waits beside the others writes such a
    throwaway there (its positions from its own length on hold nothing yet, or it is never
    read again), so only the rows that compute must fit."""

    def __init__(self, pool: KVPool, first: int, positions: list[int], tokens: int) -> None:
        # no slab of its own: the pool's is shared (KVCache.__init__ would allocate one)
        device = pool.k.device
        self.pool = pool
        self.rows = slice(first, first + len(positions))
        self.tokens = tokens
        self.batch_size = len(positions)
        self.max_len = pool.positions
        # the furthest row's start (one that runs past the slot: as far as the slot allows)
        self.length = min(max(positions), pool.positions - tokens)
        self.keys = self.length + tokens
        self.device = device
        self.slots: Tensor | None = None
        self.starts: Tensor | None = None
        self.own_keys: list[int] | None = None
        if any(p != self.length for p in positions):  # rows at positions of their own
            self.slots = torch.arange(first, first + len(positions), device=device)
            self.starts = torch.tensor(positions, device=device)
            if tokens == 1:
                own = [min(p, pool.positions - 1) + 1 for p in positions]
                saved = len(own) * self.keys - sum(own)  # keys of other rows' lengths
                row_bytes = 2 * pool.k.size(2) * pool.k.size(4) * pool.k.element_size()
                if saved * row_bytes > len(own) * ROW_CALL_BYTES:
                    self.own_keys = own

    def context(self, tokens: int) -> tuple[Tensor | None, Tensor | None]:
        if self.starts is None:  # one start for all rows: the plain causal rule from it
            return attention_rule(tokens, self.length, None, self.device), None
        pos = self._positions(tokens)
        if self.own_keys is not None:  # row by row (`row_keys`): no mask
            return None, pos
        keys = torch.arange(self.keys, device=self.starts.device)
        return (keys[None, None, :] <= pos[:, :, None])[:, None], pos

    def row_keys(self, tokens: int) -> list[int] | None:
        return self.own_keys

    def _positions(self, tokens: int) -> Tensor:
        """(B, T) positions of the new tokens, cut at the slot's last position."""
        assert self.starts is not None
        pos = self.starts[:, None] + torch.arange(tokens, device=self.starts.device)
        return pos.clamp(max=self.max_len - 1)

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        if self.slots is None or self.starts is None:  # one start for all rows: one slice
            start = self.length
            self.pool.k[layer, self.rows, :, start : start + self.tokens] = k
            self.pool.v[layer, self.rows, :, start : start + self.tokens] = v
        elif self.tokens == 1:  # one new position per row (decoding), each at its own place
            self.pool.k[layer, self.slots, :, self.starts] = k[:, :, 0]
            self.pool.v[layer, self.slots, :, self.starts] = v[:, :, 0]
        else:  # T per row: slots x (start + arange(T)), (B, T, n_head, head_dim) in place
            pos = self._positions(self.tokens)
            self.pool.k[layer, self.slots[:, None], :, pos] = k.transpose(1, 2)
            self.pool.v[layer, self.slots[:, None], :, pos] = v.transpose(1, 2)
        return (self.pool.k[layer, self.rows, :, : self.keys],
                self.pool.v[layer, self.rows, :, : self.keys])
