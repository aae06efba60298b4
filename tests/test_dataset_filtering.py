"""Iterated k-core filtering (docs/protocol.md section 2)."""

from __future__ import annotations

import numpy as np
from dataset_fixtures import reference_kcore
from hypothesis import given, settings
from hypothesis import strategies as st

from dataset_builders import kcore_filter


def _codes(pairs: list[tuple[str, str]]) -> tuple[np.ndarray, np.ndarray]:
    users = {u: k for k, u in enumerate(dict.fromkeys(u for u, _ in pairs))}
    items = {i: k for k, i in enumerate(dict.fromkeys(i for _, i in pairs))}
    return np.array([users[u] for u, _ in pairs]), np.array([items[i] for _, i in pairs])


def test_user_falls_below_minimum_only_after_an_item_is_removed() -> None:
    # U = 3, I = 2. Round 1: user "c" (1 interaction) goes, and item "z" (1 interaction) goes at the same time.
    # User "a" had 3 interactions, one of them with "z": only now (round 2) is it below 3, and it goes.
    # Its removal leaves item "y" with 1 interaction: round 3 drops it, and then "b" is below 3 too (round 4).
    pairs = [("a", "x"), ("a", "y"), ("a", "z"), ("b", "x"), ("b", "y"), ("b", "w"), ("c", "w")]
    pairs += [("d", "x"), ("d", "w"), ("d", "v"), ("e", "v"), ("e", "w"), ("e", "x")]
    users, items = _codes(pairs)
    result = kcore_filter(users, items, user_min=3, item_min=2)
    kept = [p for p, k in zip(pairs, result.keep, strict=True) if k]
    assert ("a", "x") not in kept and ("b", "x") not in kept
    assert kept == [("d", "x"), ("d", "w"), ("d", "v"), ("e", "v"), ("e", "w"), ("e", "x")]
    assert result.rounds == 4
    assert kept == [p[:2] for p in reference_kcore([(u, i, 0) for u, i in pairs], 3, 2)]


def test_users_and_items_are_judged_from_the_same_counts() -> None:
    # U = 3, I = 3. Round 1 counts: users s=2, t=3, u=1; items q=3, r=3. Users s and u are dropped, and the items
    # are judged on the same round-1 counts, so q and r survive round 1 although they fall to 1 and 2 by it.
    # Round 2 drops q and r (and so all of t). A filter that recounted between its user pass and its item pass
    # would have finished in one round.
    pairs = [("s", "q"), ("s", "q"), ("t", "q"), ("t", "r"), ("t", "r"), ("u", "r")]
    users, items = _codes(pairs)
    result = kcore_filter(users, items, user_min=3, item_min=3)
    assert result.removed_per_round == [3, 3]
    assert not result.keep.any()


def test_already_a_kcore_takes_no_round() -> None:
    users = np.repeat(np.arange(4), 5)
    items = np.tile(np.arange(5), 4)
    result = kcore_filter(users, items, user_min=5, item_min=4)
    assert result.keep.all() and result.rounds == 0


def test_repeated_pairs_count_separately() -> None:
    users = np.zeros(5, dtype=int)
    items = np.zeros(5, dtype=int)  # one user, one item, five interactions
    assert kcore_filter(users, items, user_min=5, item_min=5).keep.all()
    assert not kcore_filter(users, items, user_min=6, item_min=1).keep.any()


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 12), st.integers(0, 9)), max_size=120),
    st.integers(1, 6),
    st.integers(1, 6),
)
def test_matches_the_literal_protocol(pairs: list[tuple[int, int]], user_min: int, item_min: int) -> None:
    records = [(str(u), str(i), k) for k, (u, i) in enumerate(pairs)]
    users = np.array([u for u, _ in pairs], dtype=np.int64)
    items = np.array([i for _, i in pairs], dtype=np.int64)
    result = kcore_filter(users, items, user_min, item_min)
    expected = {t for _, _, t in reference_kcore(records, user_min, item_min)}
    assert set(np.flatnonzero(result.keep).tolist()) == expected
    kept_users, kept_items = users[result.keep], items[result.keep]
    if kept_users.size:  # the result is a k-core
        assert np.bincount(kept_users)[np.unique(kept_users)].min() >= user_min
        assert np.bincount(kept_items)[np.unique(kept_items)].min() >= item_min
