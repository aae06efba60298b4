"""Where the users' states live: an embedded SQLite file (the default) or Redis (for several server processes).

Every write is one atomic commit of a whole micro-batch: the new states (each user's summary, and its boundary when
the user reached a new one: `state.py`), and the `event_id`s they applied (so a retried event is recognised and
applied once), or nothing at all. The store also records the fingerprint of the checkpoint its states were
computed with, and refuses to be used by a server of another checkpoint.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlparse


class StoreUnavailable(RuntimeError):
    """The store cannot be reached or did not commit; nothing of the operation was applied (HTTP 503)."""


class CheckpointMismatch(RuntimeError):
    """The store holds states of another checkpoint."""


def _mismatch(where: str, stored: str, fingerprint: str) -> CheckpointMismatch:
    return CheckpointMismatch(
        f"The store {where} holds user states computed with another checkpoint (fingerprint {stored[:16]}, this "
        f"server's checkpoint is {fingerprint[:16]}): its states would give wrong recommendations. Serve the "
        "checkpoint that computed them, or use another (empty) store."
    )


@dataclass
class Commit:
    """One atomic write: new state summaries (`{user_id: bytes}`), new boundaries (`{user_id: bytes}`, only those
    that changed), the event ids they applied (`(user_id, event_id)`), and the users to forget (their states,
    boundaries and event ids)."""

    states: dict[str, bytes] = field(default_factory=dict)
    boundaries: dict[str, bytes] = field(default_factory=dict)
    events: list[tuple[str, str]] = field(default_factory=list)
    deletes: list[str] = field(default_factory=list)


SQLITE_SYNCHRONOUS = ("full", "normal")
# Pages of log after which a commit also checkpoints (copies the log into the database file). SQLite's default is
# 1,000; 200 makes each checkpoint, which holds up the commit that runs it, a fifth as long. With the scattered small
# writes of the summaries, p99 at 1,000 events/s was 42.0 and 28.7 ms with 1,000 pages, 15.1-19.7 ms with 200
# (docs/serving.md, "Load").
SQLITE_WAL_AUTOCHECKPOINT = 200


class SQLiteStore:
    """States in one SQLite file, in WAL mode.

    WAL lets readers run while a batch is written. With `synchronous="full"` (the default) the log is synced at
    every commit, so an acknowledged event survives a process kill *and* a power loss (or an operating system
    crash); with `"normal"` the log is synced only at checkpoints, so an acknowledged event survives a kill of the
    server process but may be lost with the machine's power, for a commit several times faster on this project's
    disk (docs/serving.md). `wal_autocheckpoint`: pages of log after which a commit checkpoints.
    """

    def __init__(
        self, path: str | Path, synchronous: str = "full", wal_autocheckpoint: int = SQLITE_WAL_AUTOCHECKPOINT
    ):
        if synchronous not in SQLITE_SYNCHRONOUS:
            raise ValueError(f"`synchronous` must be one of {SQLITE_SYNCHRONOUS}, got {synchronous!r}.")
        if wal_autocheckpoint < 1:
            raise ValueError(f"`wal_autocheckpoint` must be a positive number of pages, got {wal_autocheckpoint}.")
        self.path = str(path)
        self.synchronous = synchronous
        self.wal_autocheckpoint = wal_autocheckpoint
        self._local = threading.local()
        with self._connect() as db:
            db.executescript(
                "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
                "CREATE TABLE IF NOT EXISTS states (user_id TEXT PRIMARY KEY, state BLOB NOT NULL);"
                "CREATE TABLE IF NOT EXISTS boundaries (user_id TEXT PRIMARY KEY, boundary BLOB NOT NULL);"
                "CREATE TABLE IF NOT EXISTS events (user_id TEXT NOT NULL, event_id TEXT NOT NULL, "
                "PRIMARY KEY (user_id, event_id)) WITHOUT ROWID;"
            )

    def _connect(self) -> sqlite3.Connection:
        """This thread's connection (SQLite connections are not shared between threads)."""
        db = getattr(self._local, "db", None)
        if db is None:
            try:
                db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute(f"PRAGMA synchronous={self.synchronous.upper()}")
                db.execute(f"PRAGMA wal_autocheckpoint={self.wal_autocheckpoint}")
            except sqlite3.Error as error:
                raise StoreUnavailable(f"Cannot open the SQLite store {self.path}: {error}.") from error
            self._local.db = db
        return db

    def bind(self, fingerprint: str) -> None:
        """Record `fingerprint` in an empty store; refuse a store of another checkpoint."""
        db = self._connect()
        with db:
            db.execute("INSERT OR IGNORE INTO meta VALUES ('checkpoint', ?)", (fingerprint,))
            (stored,) = db.execute("SELECT value FROM meta WHERE key = 'checkpoint'").fetchone()
        if stored != fingerprint:
            raise _mismatch(self.path, stored, fingerprint)

    def get(self, user_ids: list[str]) -> dict[str, tuple[bytes, bytes | None]]:
        """`{user_id: (summary, boundary or None)}` of the users with a stored state."""
        try:
            rows = self._connect().execute(
                "SELECT user_id, state, boundary FROM states LEFT JOIN boundaries USING (user_id) "
                f"WHERE user_id IN ({','.join('?' * len(user_ids))})",
                user_ids,
            )
            return {user_id: (state, boundary) for user_id, state, boundary in rows.fetchall()}
        except sqlite3.Error as error:
            raise StoreUnavailable(f"Reading the SQLite store {self.path} failed: {error}.") from error

    def applied(self, events: list[tuple[str, str]]) -> set[tuple[str, str]]:
        """Which of `events` (`(user_id, event_id)`) are already applied."""
        if not events:
            return set()
        db = self._connect()
        try:
            return {
                pair
                for pair in events
                if db.execute("SELECT 1 FROM events WHERE user_id = ? AND event_id = ?", pair).fetchone()
            }
        except sqlite3.Error as error:
            raise StoreUnavailable(f"Reading the SQLite store {self.path} failed: {error}.") from error

    def commit(self, commit: Commit) -> None:
        db = self._connect()
        try:
            with db:  # one transaction: all of it or nothing
                db.execute("BEGIN IMMEDIATE")
                for user_id in commit.deletes:
                    for table in ("states", "boundaries", "events"):
                        db.execute(f"DELETE FROM {table} WHERE user_id = ?", (user_id,))
                db.executemany("INSERT OR REPLACE INTO states VALUES (?, ?)", commit.states.items())
                db.executemany("INSERT OR REPLACE INTO boundaries VALUES (?, ?)", commit.boundaries.items())
                db.executemany("INSERT INTO events VALUES (?, ?)", commit.events)
        except sqlite3.Error as error:
            raise StoreUnavailable(f"Writing to the SQLite store {self.path} failed: {error}.") from error

    def ping(self) -> None:
        self.get([""])

    def count(self) -> int:
        return self._connect().execute("SELECT COUNT(*) FROM states").fetchone()[0]


class RedisStore:
    """States in Redis: `{prefix}state:{user}` and `{prefix}boundary:{user}` (bytes) and `{prefix}events:{user}` (a
    set), written with MULTI/EXEC so a batch is applied whole or not at all. Durability across a Redis crash is
    Redis's own (`appendonly yes`, `appendfsync always` for the same guarantee as SQLite)."""

    def __init__(self, url: str, prefix: str = "ttt4rec:"):
        import redis

        self.url = url
        self.prefix = prefix
        self._errors = (redis.RedisError, OSError)
        self.client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)

    def _key(self, kind: str, user_id: str) -> str:
        return f"{self.prefix}{kind}:{user_id}"

    def _run(self, what: str, fn):
        try:
            return fn()
        except self._errors as error:
            raise StoreUnavailable(f"{what} the Redis store {self.url} failed: {error}.") from error

    def bind(self, fingerprint: str) -> None:
        key = self.prefix + "checkpoint"
        self._run("Binding", lambda: self.client.set(key, fingerprint, nx=True))
        stored = self._run("Reading", lambda: self.client.get(key)).decode()
        if stored != fingerprint:
            raise _mismatch(self.url, stored, fingerprint)

    def get(self, user_ids: list[str]) -> dict[str, tuple[bytes, bytes | None]]:
        """`{user_id: (summary, boundary or None)}` of the users with a stored state."""
        keys = [self._key(kind, u) for kind in ("state", "boundary") for u in user_ids]
        values = self._run("Reading", lambda: self.client.mget(keys))
        states, boundaries = values[: len(user_ids)], values[len(user_ids) :]
        return {
            u: (state, boundary)
            for u, state, boundary in zip(user_ids, states, boundaries, strict=True)
            if state is not None
        }

    def applied(self, events: list[tuple[str, str]]) -> set[tuple[str, str]]:
        if not events:
            return set()

        def check():
            pipe = self.client.pipeline(transaction=False)
            for user_id, event_id in events:
                pipe.sismember(self._key("events", user_id), event_id)
            return pipe.execute()

        return {pair for pair, hit in zip(events, self._run("Reading", check), strict=True) if hit}

    def commit(self, commit: Commit) -> None:
        def write():
            pipe = self.client.pipeline(transaction=True)  # MULTI ... EXEC
            for user_id in commit.deletes:
                pipe.delete(*(self._key(kind, user_id) for kind in ("state", "boundary", "events")))
            blobs = {self._key("state", u): blob for u, blob in commit.states.items()}
            blobs |= {self._key("boundary", u): blob for u, blob in commit.boundaries.items()}
            if blobs:
                pipe.mset(blobs)
            for user_id, event_id in commit.events:
                pipe.sadd(self._key("events", user_id), event_id)
            pipe.execute()

        self._run("Writing to", write)

    def ping(self) -> None:
        self._run("Reaching", self.client.ping)

    def count(self) -> int:
        return sum(1 for _ in self.client.scan_iter(match=self.prefix + "state:*", count=1000))


def open_store(url: str) -> SQLiteStore | RedisStore:
    """`sqlite:///PATH[?synchronous=full|normal&wal_autocheckpoint=PAGES]` (or a plain path) or
    `redis://HOST:PORT/DB`."""
    parsed = urlparse(url)
    if parsed.scheme in ("redis", "rediss", "unix"):
        return RedisStore(url)
    if parsed.scheme not in ("sqlite", ""):
        raise ValueError(f"Unknown store {url!r}: use sqlite:///PATH or redis://HOST:PORT/DB.")
    options = parse_qs(parsed.query)
    unknown = sorted(set(options) - {"synchronous", "wal_autocheckpoint"})
    if unknown:
        raise ValueError(
            f"Unknown SQLite store option(s) {unknown} in {url!r}: the options are `synchronous` and "
            "`wal_autocheckpoint`."
        )
    synchronous = options.get("synchronous", ["full"])[-1].lower()
    pages = options.get("wal_autocheckpoint", [str(SQLITE_WAL_AUTOCHECKPOINT)])[-1]
    if not pages.isdigit():
        raise ValueError(f"`wal_autocheckpoint` must be a positive number of pages, got {pages!r} in {url!r}.")
    path = url.split("?", 1)[0]
    if parsed.scheme == "sqlite":
        path = path[len("sqlite:///") :] if path.startswith("sqlite:///") else parsed.path
    return SQLiteStore(path, synchronous, int(pages))
