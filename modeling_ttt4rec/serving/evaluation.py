"""The test metrics of a model served through the compact user state (docs/serving.md, "Half-precision states").

`serving_ranks` replays every user of a split as the server does: one event with the history before the first
target, then one event per target item, each state stored (`StateCodec.encode`, `encode_boundary`) and read back
(`decode`) between events, and every target ranked from the stored final hidden state. In float32 this is the
`stream` evaluation exactly; in bfloat16 it measures what the rounding of the stored states costs.
"""

from __future__ import annotations

import numpy as np
import torch

from ..training.data import SplitSequences
from ..training.evaluation import score_ranks, scoring_matrix
from .engine import Engine
from .state import StateCodec, UserState


@torch.inference_mode()
def serving_ranks(model, split: SplitSequences, state_dtype: str = "float32", batch_users: int = 1024) -> np.ndarray:
    """The full-ranking rank of every sample of `split`, in sample order, through states stored as `state_dtype`.

    Args:
        model: a `TTT4RecForNextItemPrediction` in eval mode.
        split: the split to rank (every user with a target needs at least one item before it).
        state_dtype: the stored float format, `"float32"` or `"bfloat16"`.
        batch_users: users advanced together in one batched step (as a server's micro-batch).
    """
    counts = split.lengths - split.target_start
    if np.any(split.target_start[counts > 0] < 1):
        raise ValueError("Every user with a target needs a history before it (`target_start >= 1`).")
    codec = StateCodec(model, "00" * 32, state_dtype)  # (the fingerprint binds stores to checkpoints: none here)
    engine = Engine(model, item_map=None, store=None, codec=codec)
    items_t = scoring_matrix(model.item_features())
    sample_offset = np.concatenate([[0], np.cumsum(counts)])
    ranks = np.zeros(int(counts.sum()), dtype=np.int64)

    def stored(states: list[UserState]) -> list[UserState]:
        return [codec.decode(codec.encode(s), codec.encode_boundary(s)) for s in states]

    users = np.flatnonzero(counts > 0)
    users = users[np.argsort(-counts[users], kind="stable")]  # (similar numbers of events in one batch)
    for chunk in np.array_split(users, max(1, -(-len(users) // batch_users))):
        first = split.offsets[chunk] + split.target_start[chunk]  # where each user's targets start in `values`
        states = stored(
            engine.advance(
                [codec.new_user() for _ in chunk],
                [split.values[o:f].tolist() for o, f in zip(split.offsets[chunk], first, strict=True)],
            )
        )
        for t in range(int(counts[chunk].max())):
            active = [i for i, user in enumerate(chunk) if counts[user] > t]
            targets = torch.from_numpy(split.values[first[active] + t])
            hidden = torch.stack([states[i].last_hidden for i in active])
            ranks[sample_offset[chunk[active]] + t] = score_ranks(model, hidden, items_t, targets).numpy()
            read = [i for i in active if counts[chunk[i]] > t + 1]  # (the last target need not be read)
            new = stored(engine.advance([states[i] for i in read], [[int(split.values[first[i] + t])] for i in read]))
            for i, state in zip(read, new, strict=True):
                states[i] = state
    return ranks
