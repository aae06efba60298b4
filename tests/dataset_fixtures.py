"""Helpers for the dataset-builder tests: raw files in the exact layouts of docs/protocol.md section 1, and a slow,
literal reference implementation of docs/protocol.md sections 2-5 to compare the builders with."""

from __future__ import annotations

import gzip
import math
from collections import Counter, defaultdict
from datetime import datetime, timezone
from fractions import Fraction
from pathlib import Path

# (user, item, time) records; time is Unix seconds (or the layout's integer unit).
Record = tuple[str, str, int]


def iso(t: int) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_lines(records: list[Record], layout: str) -> list[str]:
    """The records as lines of a raw layout (no header unless the layout has one)."""
    if layout == "gowalla":
        return [f"{u}\t{iso(t)}\t30.2359091167\t-97.7951395833\t{i}" for u, i, t in records]
    if layout == "twitch-100k":
        return [f"{u},{i},streamer_{i},{t},{t + 3}" for u, i, t in records]
    if layout == "amazon-ratings":
        return [f"{u},{i},5.0,{t}" for u, i, t in records]
    if layout == "sasrec":
        return [f"{u} {i}" for u, i, _ in records]
    if layout == "movielens-100k":
        return [f"{u}\t{i}\t4\t{t}" for u, i, t in records]
    if layout == "movielens-1m":
        return [f"{u}::{i}::4::{t}" for u, i, t in records]
    if layout == "csv":
        return ["user_id,item_id,rating,timestamp"] + [f"{u},{i},1,{t}" for u, i, t in records]
    raise ValueError(layout)


def write_raw(path: Path, lines: list[str], gz: bool = False) -> Path:
    data = ("\n".join(lines) + "\n").encode()
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def reference_kcore(records: list[Record], user_min: int, item_min: int) -> list[Record]:
    """PROTOCOL 2, literally: each round finds every user below U and every item below I from the same counts."""
    kept = list(records)
    while True:
        users = Counter(u for u, _, _ in kept)
        items = Counter(i for _, i, _ in kept)
        bad_users = {u for u, c in users.items() if c < user_min}
        bad_items = {i for i, c in items.items() if c < item_min}
        if not bad_users and not bad_items:
            return kept
        kept = [r for r in kept if r[0] not in bad_users and r[1] not in bad_items]


def reference_split_counts(t: int, r: tuple[float, float, float]) -> list[int]:
    """PROTOCOL 5's pseudo-code transcribed line by line, in floats as RecBole computes it.

    This is the same formula as `dataset_builders.splitting.split_counts`, so it only checks the builder's
    vectorised copy (and any ratio, where float rounding matters); `protocol_split_labels` and the hand-computed
    cases in test_dataset_splitting.py are the independent references for the 3:2:5 and 6:2:2 splits.
    """
    c = [math.floor(r[0] * t), math.floor(r[1] * t), math.floor(r[2] * t)]
    c[0] = t - c[1] - c[2]
    for i in (1, 2):  # looks at r2 first, then r1
        if c[0] <= 1:
            break
        if 0 < r[-i] * t < 1:  # a part that rounded down to 0
            c[-i] += 1
            c[0] -= 1
    return c


def protocol_split_labels(n: int, ratios: tuple[float, float, float]) -> list[str | None]:
    """The split of each of a user's `n` interactions, from PROTOCOL 5's rule in words, independently of the
    builders: exact decimal fractions (0.3 is 3/10, not a float) and the interactions enumerated one by one.

    Interaction 0 is never a target (`None`); interaction `j` (1 <= j <= n - 1) is the target of sample `j`.
    With t = n - 1 samples, validation gets floor(r1 * t) and test floor(r2 * t), train the rest. Then, test
    first and validation second, a part whose exact share r * t is a fraction of one sample (0 < r * t < 1) takes
    one sample from train, but only while train still has more than one. Train takes the first samples, then
    validation, then test. (For 3:2:5 and 6:2:2 the floors agree with RecBole's float ones for every t below two
    million; test_dataset_splitting.py checks it.)
    """
    r = [Fraction(str(x)) for x in ratios]
    r = [x / sum(r) for x in r]
    t = max(n - 1, 0)
    validation = math.floor(r[1] * t)
    test = math.floor(r[2] * t)
    train = t - validation - test
    if train > 1 and 0 < r[2] * t < 1:
        test, train = test + 1, train - 1
    if train > 1 and 0 < r[1] * t < 1:
        validation, train = validation + 1, train - 1
    labels: list[str | None] = [None]
    for j in range(1, n):
        if j <= train:
            labels.append("train")
        elif j <= train + validation:
            labels.append("validation")
        else:
            labels.append("test")
    return labels[:n]


def reference_samples(
    records: list[Record], user_min: int, item_min: int, ratios: tuple[float, float, float], max_length: int
) -> dict[str, list[tuple[str, list[str], str]]]:
    """PROTOCOL 2-5 from scratch: {split: [(user, history of original item ids, target), ...]}."""
    kept = reference_kcore(records, user_min, item_min)
    by_user: dict[str, list[tuple[int, int, str]]] = defaultdict(list)
    for position, (u, i, t) in enumerate(kept):
        by_user[u].append((t, position, i))  # sorting by (time, file position) = stable sort by time
    out: dict[str, list[tuple[str, list[str], str]]] = {"train": [], "validation": [], "test": []}
    for u, events in by_user.items():
        s = [i for _, _, i in sorted(events)]
        labels = protocol_split_labels(len(s), ratios)
        for j in range(1, len(s)):
            out[labels[j]].append((u, s[max(0, j - max_length) : j], s[j]))
    return out
