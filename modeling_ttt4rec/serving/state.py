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

MAGIC = b"TTS1"
# magic, float dtype code, flags, checkpoint fingerprint (16 bytes), seen, len(pending), len(history)
_HEADER = struct.Struct("<4sBB2x16sqII")
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
        """The stored bytes of `state`."""
        flags = _HAS_BOUNDARY if state.boundary is not None else 0
        header = _HEADER.pack(
            MAGIC, self.dtype_code, flags, self.fingerprint, state.seen, len(state.pending), len(state.history)
        )
        floats = state.last_hidden if state.boundary is None else torch.cat([state.last_hidden, state.boundary])
        ids = torch.tensor(state.pending + state.history, dtype=torch.int32)
        return header + _tensor_bytes(floats.to(self.store_dtype)) + _tensor_bytes(ids)

    def decode(self, blob: bytes, user_id: str = "?") -> UserState:
        """The state stored as `blob`; a `StateError` if it belongs to another checkpoint or is damaged."""
        if len(blob) < _HEADER.size:
            raise StateError(f"The stored state of user {user_id!r} is truncated ({len(blob)} bytes).")
        magic, code, flags, fingerprint, seen, n_pending, n_history = _HEADER.unpack_from(blob)
        if magic != MAGIC or code not in _DTYPE_BY_CODE:
            raise StateError(f"The stored state of user {user_id!r} is not a TTT4Rec serving state (damaged?).")
        if fingerprint != self.fingerprint:
            raise StateError(
                f"The stored state of user {user_id!r} was computed with another checkpoint (fingerprint "
                f"{fingerprint.hex()}, this server's is {self.fingerprint.hex()}); serve that checkpoint, or delete "
                "the user to start over."
            )
        dtype = _DTYPE_BY_CODE[code]
        num_floats = self.hidden_size + (self.boundary_numel if flags & _HAS_BOUNDARY else 0)
        float_bytes = num_floats * torch.finfo(dtype).bits // 8
        expected = _HEADER.size + float_bytes + 4 * (n_pending + n_history)
        if len(blob) != expected or n_pending != seen % self.mini_batch_size:
            raise StateError(
                f"The stored state of user {user_id!r} is damaged ({len(blob)} bytes, {expected} expected)."
            )
        floats = torch.frombuffer(bytearray(blob[_HEADER.size : _HEADER.size + float_bytes]), dtype=dtype).float()
        ids = torch.frombuffer(bytearray(blob[_HEADER.size + float_bytes :]), dtype=torch.int32).tolist()
        boundary = floats[self.hidden_size :] if flags & _HAS_BOUNDARY else None
        return UserState(seen, ids[:n_pending], ids[n_pending:], boundary, floats[: self.hidden_size])

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
