"""The in-memory LRU of users' states, laid out so that the garbage collector never walks it.

CPython's collector visits every container object it tracks, and a full collection runs each time the surviving
objects have grown by a quarter. Held as `UserState`s (a dataclass, two lists, a set and three tensors each),
100,000 states are about a million tracked objects, and one full collection over them took 670 ms: a pause of the
whole server every few tens of thousands of events (docs/serving.md, "Load"). Here the floats of all states are
rows of a few large tensors (blocks of up to `BLOCK_ROWS` rows, allocated as the LRU fills), and each user's entry
is a tuple of integers and tuples of integers, which the collector stops tracking once it has seen them: the states
held cost it nothing.
"""

from __future__ import annotations

import collections
import threading

import torch

from .state import StateCodec, UserState

BLOCK_ROWS = 1024


class StateLRU:
    """Up to `capacity` users' states, least recently used evicted first; thread-safe.

    `get` returns a copy (a `UserState` of its own), so a state handed to a batch is never changed by a later `put`.

    Args:
        codec: the `StateCodec` of the served model (its row layout).
        capacity: most states held (0: none).
    """

    def __init__(self, codec: StateCodec, capacity: int):
        self.codec = codec
        self.capacity = max(0, capacity)
        self._block_rows = max(1, min(BLOCK_ROWS, self.capacity))
        # A live row holds the boundary only when the model has no convolution windows (`StateCodec`).
        self._separate_boundaries = not codec.boundary_in_row
        self._rows: list[torch.Tensor] = []  # blocks of [BLOCK_ROWS, row]
        self._boundaries: list[torch.Tensor] = []  # blocks of [BLOCK_ROWS, boundary], mamba backbone only
        self._free: list[int] = []
        # user id -> (slot, seen, pending, history, live, has_boundary)
        self._entries: collections.OrderedDict[str, tuple] = collections.OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, user_id: str) -> bool:
        return user_id in self._entries

    def get(self, user_id: str) -> UserState | None:
        """A copy of the user's state (and the user becomes the most recently used), or None."""
        with self._lock:
            entry = self._entries.get(user_id)
            if entry is None:
                return None
            self._entries.move_to_end(user_id)
            slot, seen, pending, history, live, has_boundary = entry
            row = self._slot(self._rows, slot).clone()
            boundary = None
            if has_boundary:
                if self._separate_boundaries:
                    boundary = self._slot(self._boundaries, slot).clone()
                else:
                    boundary = row[: self.codec.boundary_numel]
        last_hidden = row[-self.codec.hidden_size :]
        return UserState(seen, list(pending), list(history), boundary, last_hidden, row if live else None)

    def put(self, user_id: str, state: UserState) -> None:
        """Hold `state` as the user's (the most recently used), evicting the least recently used beyond capacity."""
        if self.capacity == 0:
            return
        with self._lock:
            old = self._entries.pop(user_id, None)
            if old is None and len(self._entries) >= self.capacity:
                _, evicted = self._entries.popitem(last=False)  # (the least recently used)
                self._free.append(evicted[0])
            slot = old[0] if old is not None else self._allocate()
            row = self._slot(self._rows, slot)
            if state.row is not None:  # the live cache row
                row.copy_(state.row)
            else:  # a state read from its stored bytes: its boundary and final hidden state
                if state.boundary is not None and not self._separate_boundaries:
                    row[: self.codec.boundary_numel].copy_(state.boundary)
                row[-self.codec.hidden_size :].copy_(state.last_hidden)
            if state.boundary is not None and self._separate_boundaries:
                self._slot(self._boundaries, slot).copy_(state.boundary)
            self._entries[user_id] = (
                slot,
                state.seen,
                tuple(state.pending),
                tuple(state.history),
                state.row is not None,
                state.boundary is not None,
            )

    def pop(self, user_id: str) -> None:
        """Forget the user's state, if held."""
        with self._lock:
            entry = self._entries.pop(user_id, None)
            if entry is not None:
                self._free.append(entry[0])

    def is_live(self, user_id: str) -> bool:
        """Whether the user's state is held as its whole cache row (the next event reads only its new items)."""
        return self._entries[user_id][4]

    def _allocate(self) -> int:
        """A free slot; a new block of rows when none is left."""
        if not self._free:
            n = self._block_rows
            start = len(self._rows) * n
            self._rows.append(torch.empty(n, self.codec.row_numel))
            if self._separate_boundaries:
                self._boundaries.append(torch.empty(n, self.codec.boundary_numel))
            self._free.extend(range(start + n - 1, start - 1, -1))  # (lowest slot first)
        return self._free.pop()

    def _slot(self, blocks: list[torch.Tensor], slot: int) -> torch.Tensor:
        """Row `slot` of `blocks` (a view)."""
        return blocks[slot // self._block_rows][slot % self._block_rows]


__all__ = ["StateLRU"]
