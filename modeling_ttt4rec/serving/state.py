"""The compact per-user state: what the server stores for each user, and how it becomes a `TTT4RecCache` again.

A cache row holds the inner weights at the last mini-batch boundary *and* the gradient sums of the items read since
(as large as the weights). The compact state keeps instead the item ids read since the boundary, a few integers,
and replays them on load (docs/serving.md, "What is stored per user"):

* the inner weights and the convolution windows (mamba backbone) at the last mini-batch boundary; omitted while the
  user has not finished a mini-batch (the boundary is then the model's initial state);
* the final hidden state after the newest item (recommendations without replaying anything);
* `seen`, the item ids read since the boundary (`pending`), and the distinct items read (`history`, for
  `exclude_seen`);
* the checkpoint's fingerprint, so that a state is never used with another checkpoint.

It is stored in two parts: the *boundary* (the weights and windows: nearly all the bytes), which changes once every
`mini_batch_size` items and is written only then, and the *summary* (everything else, a few hundred bytes), written
at every event. The summary names the boundary it goes with (`seen - len(pending)`), and the two are always written
in one atomic commit, so a summary is never read with another boundary.

Replaying `pending` from the boundary gives the same cache as the one that read them (the cache is exact for any
chunking of a history), so the compact state loses nothing.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..cache import TTT4RecCache

MAGIC = b"TTS2"
# magic, float dtype code, flags, checkpoint fingerprint (16 bytes), seen, len(pending), len(history)
_HEADER = struct.Struct("<4sBB2x16sqII")
BOUNDARY_MAGIC = b"TTB2"
# magic, float dtype code, checkpoint fingerprint (16 bytes), seen at the boundary
_BOUNDARY_HEADER = struct.Struct("<4sB3x16sq")
_HAS_BOUNDARY = 1
STATE_DTYPES = {"float32": (0, torch.float32), "bfloat16": (1, torch.bfloat16)}
_DTYPE_BY_CODE = {code: dtype for code, dtype in STATE_DTYPES.values()}


class StateError(ValueError):
    """A stored state that this server cannot use (another checkpoint, damaged bytes)."""


def checkpoint_fingerprint(folder: str | Path, item_map_fingerprint: str) -> str:
    """SHA-256 of a checkpoint's weight files (`*.safetensors`, by name) and of its item map: states computed with
    one checkpoint are refused by a server of another (docs/serving.md, "Durability")."""
    digest = hashlib.sha256()
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise ValueError(f"{folder} has no weights (model.safetensors): it is not a complete checkpoint.")
    for path in files:
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    digest.update(item_map_fingerprint.encode())
    return digest.hexdigest()


@dataclass
class UserState:
    """One user's compact state, decoded.

    Attributes:
        seen: how many items the user has read.
        pending: dense ids of the items read since the last mini-batch boundary (`seen % mini_batch_size` of them).
        history: the distinct dense ids the user has read, in first-read order.
        boundary: the flat float data of the boundary weights and windows, or None at the initial state.
        last_hidden: `[hidden]`, the final hidden state after the newest item (zeros before the first).
        row: the user's whole cache row, flat (`StateCodec.row_names`), when the state was just computed: a
            server keeps it in memory so that the next event need not replay `pending`. None for a state read from
            its stored bytes. Never stored.
    """

    seen: int
    pending: list[int]
    history: list[int]
    boundary: torch.Tensor | None
    last_hidden: torch.Tensor
    row: torch.Tensor | None = field(default=None, repr=False)
    history_set: set[int] = field(default_factory=set, repr=False)

    def __post_init__(self) -> None:
        self.history_set = set(self.history)


class StateCodec:
    """Encodes and decodes the compact states of one model and checkpoint.

    Args:
        model: the `TTT4RecForNextItemPrediction` served (its cache layout and initial state).
        fingerprint: `checkpoint_fingerprint` of its checkpoint (hex).
        state_dtype: `"float32"` (exact) or `"bfloat16"` (half the bytes; see docs/serving.md).
    """

    def __init__(self, model, fingerprint: str, state_dtype: str = "float32"):
        if state_dtype not in STATE_DTYPES:
            raise ValueError(f"`state_dtype` must be one of {sorted(STATE_DTYPES)}, got {state_dtype!r}.")
        self.model = model
        self.mini_batch_size = model.config.mini_batch_size
        self.hidden_size = model.config.hidden_size
        self.fingerprint = bytes.fromhex(fingerprint)[:16]
        self.dtype_code, self.store_dtype = STATE_DTYPES[state_dtype]
        initial = model.init_cache(1)
        self.cache_config = initial.config_dict
        template = initial.state_dict()
        # the boundary: inner weights and convolution windows, in the cache's own order
        self.boundary_names = [name for name in template if ".weights." in name or ".conv." in name]
        self.boundary_sizes = [template[name][0].numel() for name in self.boundary_names]
        self.boundary_numel = sum(self.boundary_sizes)
        # A live row: the boundary's tensors first, then the gradient sums and the final hidden state. After any
        # read the inner weights are those of the last boundary; the convolution windows are not (they hold the
        # newest inputs), so only a model without them reads its boundary off a live row (`boundary_in_row`).
        self.row_names = self.boundary_names + [name for name in template if ".pending." in name]
        self.row_names.append("last_hidden_state")
        self.row_shapes = [template[name].shape[1:] for name in self.row_names]
        self.row_sizes = [shape.numel() for shape in self.row_shapes]
        self.row_numel = sum(self.row_sizes)
        self.boundary_in_row = not any(".conv." in name for name in self.boundary_names)
        self.initial_boundary = torch.cat([template[name].reshape(-1) for name in self.boundary_names]).detach()
        self.no_pending = torch.zeros(sum(template[name].numel() for name in template if ".pending." in name))

    # --------------------------------------------------------------------------------------------------------------
    # bytes <-> UserState
    # --------------------------------------------------------------------------------------------------------------

    def new_user(self) -> UserState:
        """The state of a user who has read nothing."""
        return UserState(0, [], [], None, torch.zeros(self.hidden_size))

    def encode(self, state: UserState) -> bytes:
        """The stored summary of `state` (written at every event): all of it but the boundary."""
        flags = _HAS_BOUNDARY if state.boundary is not None else 0
        header = _HEADER.pack(
            MAGIC, self.dtype_code, flags, self.fingerprint, state.seen, len(state.pending), len(state.history)
        )
        ids = torch.tensor(state.pending + state.history, dtype=torch.int32)
        return header + _tensor_bytes(state.last_hidden.to(self.store_dtype)) + _tensor_bytes(ids)

    def encode_boundary(self, state: UserState) -> bytes | None:
        """The stored boundary of `state` (written only when the user reaches a new one); None before the first."""
        if state.boundary is None:
            return None
        at = state.seen - len(state.pending)
        header = _BOUNDARY_HEADER.pack(BOUNDARY_MAGIC, self.dtype_code, self.fingerprint, at)
        return header + _tensor_bytes(state.boundary.to(self.store_dtype))

    def crossed_boundary(self, before: UserState, after: UserState) -> bool:
        """Whether `after` (the state `before` became) has a new boundary to write."""
        return after.seen // self.mini_batch_size != before.seen // self.mini_batch_size

    def decode(self, summary: bytes, boundary: bytes | None = None, user_id: str = "?") -> UserState:
        """The state stored as `summary` and `boundary`; a `StateError` if it belongs to another checkpoint, is
        damaged, or its two parts do not belong together."""
        if len(summary) < _HEADER.size:
            raise StateError(f"The stored state of user {user_id!r} is truncated ({len(summary)} bytes).")
        magic, code, flags, fingerprint, seen, n_pending, n_history = _HEADER.unpack_from(summary)
        if magic != MAGIC or code not in _DTYPE_BY_CODE:
            raise StateError(
                f"The stored state of user {user_id!r} is not a TTT4Rec serving state of this version (format "
                f"{MAGIC.decode()}): damaged, or written by another version; delete the user to start over."
            )
        self._check_fingerprint(fingerprint, user_id)
        dtype = _DTYPE_BY_CODE[code]
        float_bytes = self.hidden_size * torch.finfo(dtype).bits // 8
        expected = _HEADER.size + float_bytes + 4 * (n_pending + n_history)
        if len(summary) != expected or n_pending != seen % self.mini_batch_size:
            raise StateError(
                f"The stored state of user {user_id!r} is damaged ({len(summary)} bytes, {expected} expected)."
            )
        last_hidden = torch.frombuffer(bytearray(summary[_HEADER.size : _HEADER.size + float_bytes]), dtype=dtype)
        ids = summary[_HEADER.size + float_bytes :]
        ids = torch.frombuffer(bytearray(ids), dtype=torch.int32).tolist() if ids else []
        has_boundary = bool(flags & _HAS_BOUNDARY)
        if has_boundary != (boundary is not None):
            raise StateError(
                f"The stored state of user {user_id!r} is damaged: its boundary is "
                f"{'missing' if has_boundary else 'there but not expected'}."
            )
        weights = None if boundary is None else self._decode_boundary(boundary, dtype, seen - n_pending, user_id)
        return UserState(seen, ids[:n_pending], ids[n_pending:], weights, last_hidden.float())

    def _decode_boundary(self, blob: bytes, dtype: torch.dtype, seen: int, user_id: str) -> torch.Tensor:
        """The flat boundary data stored as `blob`, checked to be the one at `seen` items."""
        expected = _BOUNDARY_HEADER.size + self.boundary_numel * torch.finfo(dtype).bits // 8
        if len(blob) != expected:
            raise StateError(
                f"The stored boundary of user {user_id!r} is damaged ({len(blob)} bytes, {expected} expected)."
            )
        magic, code, fingerprint, boundary_seen = _BOUNDARY_HEADER.unpack_from(blob)
        if magic != BOUNDARY_MAGIC or _DTYPE_BY_CODE.get(code) != dtype:
            raise StateError(f"The stored boundary of user {user_id!r} is damaged (header).")
        self._check_fingerprint(fingerprint, user_id)
        if boundary_seen != seen:
            raise StateError(
                f"The stored boundary of user {user_id!r} is the one after {boundary_seen} items, its state needs "
                f"the one after {seen} (damaged)."
            )
        return torch.frombuffer(bytearray(blob[_BOUNDARY_HEADER.size :]), dtype=dtype).float()

    def _check_fingerprint(self, fingerprint: bytes, user_id: str) -> None:
        if fingerprint != self.fingerprint:
            raise StateError(
                f"The stored state of user {user_id!r} was computed with another checkpoint (fingerprint "
                f"{fingerprint.hex()}, this server's is {self.fingerprint.hex()}); serve that checkpoint, or delete "
                "the user to start over."
            )

    # --------------------------------------------------------------------------------------------------------------
    # UserState <-> cache rows
    # --------------------------------------------------------------------------------------------------------------

    def cache_of(self, states: list[UserState]) -> TTT4RecCache:
        """A cache whose row `i` is `states[i]`: its live row when it has one (its items all read), else the state
        at its last mini-batch boundary with nothing pending and the final hidden state after its newest item
        (replaying `states[i].pending` from there gives the user's exact cache). `seen` says which."""
        rows = [s.row if s.row is not None else self._boundary_row(s) for s in states]
        data = torch.stack(rows).to(self.initial_boundary.dtype)  # [batch, row]
        parts = data.split(self.row_sizes, dim=1)
        flat = {
            name: part.reshape(len(states), *shape)
            for name, shape, part in zip(self.row_names, self.row_shapes, parts, strict=True)
        }
        flat["seen"] = torch.tensor([s.seen if s.row is not None else s.seen - len(s.pending) for s in states])
        return TTT4RecCache.from_state_dict(flat, self.cache_config)

    def _boundary_row(self, state: UserState) -> torch.Tensor:
        boundary = self.initial_boundary if state.boundary is None else state.boundary
        return torch.cat([boundary.to(self.no_pending.dtype), self.no_pending, state.last_hidden])

    def live_rows(self, cache: TTT4RecCache) -> list[torch.Tensor]:
        """Each row of `cache`, flat (`row_names`): views of one new tensor (the LRU copies what it keeps)."""
        flat = cache.state_dict()
        data = torch.cat([flat[name].reshape(cache.batch_size, -1) for name in self.row_names], dim=1)
        return list(data.detach().float().unbind(0))

    def boundaries(self, cache: TTT4RecCache, rows: list[int]) -> list[torch.Tensor]:
        """The flat boundary data of `rows` of a cache that is at a mini-batch boundary on those rows."""
        flat = cache.state_dict()
        data = torch.cat([flat[name][rows].reshape(len(rows), -1) for name in self.boundary_names], dim=1)
        return list(data.detach().float().unbind(0))


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    """The raw little-endian bytes of a 1-D tensor."""
    return tensor.contiguous().view(torch.uint8).numpy().tobytes()
