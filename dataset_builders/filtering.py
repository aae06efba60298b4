"""Iterated k-core filtering, exactly as docs/protocol.md section 2 (RecBole's ``user_inter_num_interval`` /
``item_inter_num_interval`` filter).

Keep users with at least ``user_min`` interactions and items with at least ``item_min``, and repeat until
nothing changes. In each round every user below ``user_min`` and every item below ``item_min`` is found *at the
same time*, from the same counts, and all their interactions are dropped; then everything is counted again.
Repeated (user, item) pairs count as separate interactions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["KCoreResult", "kcore_filter"]


@dataclass
class KCoreResult:
    """The outcome of :func:`kcore_filter`.

    Attributes:
        keep: Boolean mask over the input interactions: ``True`` for those that survive.
        rounds: How many rounds removed something (0 when the data was already a k-core).
        removed_per_round: Interactions dropped in each of those rounds.
    """

    keep: np.ndarray
    rounds: int
    removed_per_round: list[int]


def kcore_filter(
    users: np.ndarray,
    items: np.ndarray,
    user_min: int,
    item_min: int,
    on_round: Callable[[int, int], None] | None = None,
) -> KCoreResult:
    """Iterated k-core over interactions given as integer user and item codes (one pair per interaction).

    Args:
        users: Non-negative integer user code of each interaction.
        items: Non-negative integer item code of each interaction (same length as ``users``).
        user_min: Minimum number of interactions a user must keep (``U``; 1 or less disables it).
        item_min: Minimum number of interactions an item must keep (1 or less disables it).
        on_round: Called after each removing round with ``(round, interactions left)`` (for progress bars).

    Returns:
        A :class:`KCoreResult` whose ``keep`` mask selects the interactions of the k-core.
    """
    users = np.asarray(users)
    items = np.asarray(items)
    if users.shape != items.shape or users.ndim != 1:
        raise ValueError(f"users and items must be 1-D and of the same length, got {users.shape} and {items.shape}")
    alive = np.arange(users.size)  # indices of the interactions still kept
    num_users = int(users.max()) + 1 if users.size else 0
    num_items = int(items.max()) + 1 if items.size else 0
    removed: list[int] = []
    while alive.size:
        u, i = users[alive], items[alive]
        # Count once, then judge every user and every item against the same counts.
        user_count = np.bincount(u, minlength=num_users)
        item_count = np.bincount(i, minlength=num_items)
        drop = (user_count[u] < user_min) | (item_count[i] < item_min)
        if not drop.any():
            break
        removed.append(int(drop.sum()))
        alive = alive[~drop]
        if on_round is not None:
            on_round(len(removed), int(alive.size))
    keep = np.zeros(users.size, dtype=bool)
    keep[alive] = True
    return KCoreResult(keep=keep, rounds=len(removed), removed_per_round=removed)
