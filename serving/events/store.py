"""Event and identity storage behind one interface: SQLite (embedded default) and Redis (production).

    store = open_store("sqlite:///artifacts/events.db")     # or "redis://127.0.0.1:6379/0"
    store.append(events)                                     # idempotent by event_id; durable on return
    store.identify("c1", device_id="d1", session_id="s1")   # login: d1 and s1 now belong to c1
    store.events_of(store.identity_keys("device", "d1"), limit=50)

Durability: `append` returns only after the events are on disk, so the collector acknowledges nothing
it could lose. SQLite runs in WAL mode with `synchronous=FULL` (each commit fsyncs the WAL). Redis must
run with `appendonly yes` and `appendfsync always` (it then fsyncs the append-only file before it
replies); `RedisStore` checks that at connection and refuses a server configured otherwise unless told
`durable=False`.

Identity model (the same in both stores): a *link* maps an identity key (`customer:<id>`,
`device:<id>`, `session:<id>`) to a canonical customer id. A login (`identify`) links the device and
session to the customer; an event that carries a customer id together with a device or session id
links them too. Merging customer B into A points every key of B at A. An event belongs to customer C
when its customer id is linked to C, or when it is anonymous (no customer id) and its device or
session is linked to C; so the anonymous session that led to a login joins the profile, and anonymous
events of a shared device follow the device's latest login. Events are never rewritten.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from intentrec.data.features import PURCHASE_EVENTS
from intentrec.data.schema import FEEDBACK_TYPES, RECOMMENDATION_COLUMNS, SCHEMA_VERSION
from intentrec.errors import ConfigError
from intentrec.serving.events.schema import EVENT_FIELDS, differences

KINDS = ("customer", "device", "session")


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class AppendResult:
    accepted: int  # new events stored
    duplicates: int  # event_id already stored with the same payload
    # event_id already stored with a different payload (not stored): {"index", "event_id", "fields"}
    conflicts: tuple[dict, ...] = ()


def _classify(events: list[dict], existing: Iterable[tuple[int, dict]]) -> tuple[int, tuple[dict, ...]]:
    """(identical resends, conflicts) among the events whose event_id was stored already."""
    duplicates, conflicts = 0, []
    for index, stored in existing:
        changed = differences(events[index], stored)
        if changed:
            conflicts.append({"index": index, "event_id": events[index]["event_id"], "fields": changed})
        else:
            duplicates += 1
    return duplicates, tuple(conflicts)


@dataclass(frozen=True)
class IdentityKeys:
    """The identity keys whose events make up one shopper's profile."""

    customer: str | None  # canonical customer id, or None for a device/session not yet linked to one
    customers: frozenset[str]
    devices: frozenset[str]
    sessions: frozenset[str]

    def owns(self, event: dict) -> bool:
        if event.get("customer_id"):
            return event["customer_id"] in self.customers
        return event.get("device_id") in self.devices or event.get("session_id") in self.sessions


def _keys(customer: str | None, members: Iterable[str]) -> IdentityKeys:
    groups: dict[str, set[str]] = {kind: set() for kind in KINDS}
    for member in members:
        kind, _, value = member.partition(":")
        if kind in groups:
            groups[kind].add(value)
    if customer is not None:
        groups["customer"].add(customer)
    return IdentityKeys(
        customer, frozenset(groups["customer"]), frozenset(groups["device"]), frozenset(groups["session"])
    )


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"identity kind {kind!r} is not one of {list(KINDS)}")


class EventStore(ABC):
    """Events (append-only, idempotent by event_id), identity links and customer traits."""

    url: str

    @abstractmethod
    def append(self, events: list[dict]) -> AppendResult:
        """Store new events atomically and durably; events whose event_id is stored already are not stored
        again: counted as duplicates when their payload is the same, returned as conflicts when it differs."""

    @abstractmethod
    def identify(
        self,
        customer_id: str,
        device_id: str | None = None,
        session_id: str | None = None,
        merge_customer_ids: Iterable[str] = (),
        traits: dict | None = None,
    ) -> str:
        """Link a device and session to a customer, merge other customers into it; returns the canonical id."""

    @abstractmethod
    def owner(self, kind: str, value: str) -> str | None:
        """Canonical customer of an identity key, or None (an unknown device/session; a customer id is its own)."""

    @abstractmethod
    def members(self, customer: str) -> set[str]:
        """Identity keys linked to a canonical customer."""

    @abstractmethod
    def _candidates(self, keys: IdentityKeys, limit: int, purchases_only: bool) -> list[dict]:
        """Events touching any of the keys, newest first (a superset of what `keys.owns`; at most `limit` per key)."""

    @abstractmethod
    def impressed(self, recommendation_ids: Iterable[str]) -> set[str]:
        """The given recommendation ids that have at least one stored impression."""

    @abstractmethod
    def cart_adds(self, since_ms: int) -> list[dict]:
        """add_to_cart events with event_time >= since_ms (to find carts that may be abandoned)."""

    @abstractmethod
    def traits(self, customer: str) -> dict:
        """Stored traits of a customer (`loyalty_member`, `email`)."""

    @abstractmethod
    def customers(self) -> list[str]:
        """Every canonical customer id (sorted)."""

    @abstractmethod
    def iter_events(self, after_seq: int = 0, chunk: int = 10_000) -> Iterator[dict]:
        """Every stored event in arrival order, each with its `seq` (for export)."""

    @abstractmethod
    def count(self) -> int:
        """Number of stored events."""

    def column_chunks(
        self, columns: tuple[str, ...], event_types: tuple[str, ...] | None = None, chunk: int = 200_000
    ) -> Iterator[dict[str, list]]:
        """The stored events' `columns` (only `event_types` when given), column by column in chunks of rows,
        in arrival order: what analyses read (attribution, the report) without a dict per event."""
        wanted = set(event_types) if event_types else None
        out: dict[str, list] = {c: [] for c in columns}
        for event in self.iter_events(chunk=chunk):
            if wanted is None or event["event_type"] in wanted:
                for c in columns:
                    out[c].append(event.get(c))
                if len(out[columns[0]]) >= chunk:
                    yield out
                    out = {c: [] for c in columns}
        if out[columns[0]]:
            yield out

    def close(self) -> None:  # noqa: B027 - optional
        pass

    def shopper_of(self, event: dict) -> tuple[str, str]:
        """(kind, value) of the shopper an event belongs to: its customer's canonical id; for an anonymous event
        the customer its device (else session) is linked to, or that device (else session) itself."""
        if event.get("customer_id"):
            kind, value = "customer", event["customer_id"]
        elif event.get("device_id"):
            kind, value = "device", event["device_id"]
        else:
            kind, value = "session", event["session_id"]
        owner = self.owner(kind, value)
        return ("customer", owner) if owner else (kind, value)

    def identity_keys(self, kind: str, value: str) -> IdentityKeys:
        _check_kind(kind)
        customer = self.owner(kind, value)
        if customer is None:
            return _keys(None, [f"{kind}:{value}"])
        return _keys(customer, self.members(customer))

    def events_of(self, keys: IdentityKeys, limit: int = 200, purchases_only: bool = False) -> list[dict]:
        """The identity's shopper actions, newest first, at most `limit` (feedback on served lists, the
        impressions and clicks, is not part of a profile: `iter_events` and attribution read it)."""
        events = [e for e in self._candidates(keys, limit, purchases_only) if keys.owns(e)]
        events.sort(key=lambda e: (e["event_time"], e["seq"]), reverse=True)
        return events[:limit]


# ------------------------------------------------------------------------------------------------- SQLite

_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    event_time INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    session_id TEXT, customer_id TEXT, device_id TEXT,
    item_id TEXT NOT NULL, event_type TEXT NOT NULL,
    price REAL, quantity INTEGER, channel TEXT, device_type TEXT, referrer TEXT, region TEXT,
    recommendation_id TEXT, position INTEGER, placement TEXT, experiment TEXT, arm TEXT, model_version TEXT,
    propensity REAL
);
CREATE INDEX IF NOT EXISTS events_customer ON events(customer_id, event_time);
CREATE INDEX IF NOT EXISTS events_device ON events(device_id, event_time);
CREATE INDEX IF NOT EXISTS events_session ON events(session_id, event_time);
CREATE INDEX IF NOT EXISTS events_type ON events(event_type, event_time);
CREATE TABLE IF NOT EXISTS links (key TEXT PRIMARY KEY, customer_id TEXT NOT NULL, linked_at INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS links_customer ON links(customer_id);
CREATE TABLE IF NOT EXISTS traits (customer_id TEXT PRIMARY KEY, loyalty_member INTEGER, email TEXT);
"""
# Run after the columns of a version-1 database are added (`SQLiteStore._migrate`).
_SQLITE_INDEXES = """
CREATE INDEX IF NOT EXISTS events_recommendation ON events(recommendation_id, event_type)
    WHERE recommendation_id IS NOT NULL;
"""
# SQLite column types of the version-2 columns (data.schema.RECOMMENDATION_COLUMNS).
_SQLITE_TYPES = {"position": "INTEGER", "propensity": "REAL"}
_NOT_FEEDBACK = f"+event_type NOT IN ({', '.join(repr(t) for t in FEEDBACK_TYPES)})"
_INSERT = (
    f"INSERT INTO events ({', '.join(EVENT_FIELDS)}, received_at) VALUES ({', '.join('?' * (len(EVENT_FIELDS) + 1))}) "
    "ON CONFLICT(event_id) DO NOTHING"
)
_COLUMNS = ("seq", *EVENT_FIELDS)


def _chunks(values: list, size: int = 500) -> Iterator[list]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


class SQLiteStore(EventStore):
    """One SQLite file in WAL mode; writes are serialized by a lock, each `append` is one fsynced transaction."""

    def __init__(self, path: str | Path, readonly: bool = False):
        self.path = Path(path)
        self.url = f"sqlite:///{self.path}"
        if readonly:
            if not self.path.is_file():
                raise ConfigError(
                    f"store={self.url}: {self.path} does not exist; point store= at the event database the "
                    "collector writes (python -m serving.events serve store=sqlite:///<path>)."
                )
            self.db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.executescript(_SQLITE_SCHEMA)
            self._migrate()
        self.db.execute("PRAGMA busy_timeout=5000")
        self.lock = threading.Lock()
        self.readonly = readonly
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        # A read-only version-1 database has no list columns: they read as empty.
        present = {row[1] for row in self.db.execute("PRAGMA table_info(events)")}
        self._columns = tuple(c for c in _COLUMNS if c in present)
        self._select = ", ".join(self._columns)

    def _migrate(self) -> None:
        """Bring a database written at an older schema version to SCHEMA_VERSION (adds columns; rewrites nothing)."""
        present = {row[1] for row in self.db.execute("PRAGMA table_info(events)")}
        for column in RECOMMENDATION_COLUMNS:
            if column not in present:
                self.db.execute(f"ALTER TABLE events ADD COLUMN {column} {_SQLITE_TYPES.get(column, 'TEXT')}")
        self.db.executescript(_SQLITE_INDEXES)
        self.db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    @property
    def schema_version(self) -> int:
        """The schema version the database was written at (0 or 1: before versions were recorded)."""
        return int(self.db.execute("PRAGMA user_version").fetchone()[0]) or 1

    def _event(self, row: tuple) -> dict:
        event = dict.fromkeys(_COLUMNS)
        event.update(zip(self._columns, row))
        return event

    @property
    def reader(self) -> sqlite3.Connection:
        """This thread's read connection: WAL readers see committed data only, never a writer's open transaction."""
        connection = getattr(self._local, "db", None)
        if connection is None:
            connection = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
            connection.execute("PRAGMA busy_timeout=5000")
            self._local.db = connection
            self._readers.append(connection)
        return connection

    # Identity helpers run inside the caller's transaction.
    def _owner(self, key: str) -> str | None:
        row = self.db.execute("SELECT customer_id FROM links WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def _link(self, key: str, customer: str, at: int) -> None:
        self.db.execute(
            "INSERT INTO links VALUES (?, ?, ?) ON CONFLICT(key) DO UPDATE SET customer_id = excluded.customer_id, "
            "linked_at = excluded.linked_at WHERE customer_id != excluded.customer_id",
            (key, customer, at),
        )

    def _login(self, customer_id: str, device_id: str | None, session_id: str | None, at: int) -> str:
        canonical = self._owner(f"customer:{customer_id}") or customer_id
        self._link(f"customer:{customer_id}", canonical, at)
        if device_id:
            self._link(f"device:{device_id}", canonical, at)
        if session_id:
            self._link(f"session:{session_id}", canonical, at)
        return canonical

    def append(self, events: list[dict]) -> AppendResult:
        received = now_ms()
        accepted, existing = 0, []
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                for index, event in enumerate(events):
                    cursor = self.db.execute(_INSERT, (*(event.get(f) for f in EVENT_FIELDS), received))
                    if cursor.rowcount != 1:
                        row = self.db.execute(
                            f"SELECT {self._select} FROM events WHERE event_id = ?", (event["event_id"],)
                        ).fetchone()
                        existing.append((index, self._event(row)))
                        continue
                    accepted += 1
                    if event.get("customer_id"):
                        self._login(event["customer_id"], event.get("device_id"), event.get("session_id"), received)
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
        return AppendResult(accepted, *_classify(events, existing))

    def identify(self, customer_id, device_id=None, session_id=None, merge_customer_ids=(), traits=None) -> str:
        at = now_ms()
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                canonical = self._owner(f"customer:{customer_id}") or customer_id
                for other in merge_customer_ids:
                    merged = self._owner(f"customer:{other}") or other
                    if merged == canonical:
                        continue
                    self.db.execute(
                        "UPDATE links SET customer_id = ?, linked_at = ? WHERE customer_id = ?", (canonical, at, merged)
                    )
                    self._link(f"customer:{other}", canonical, at)
                    self._link(f"customer:{merged}", canonical, at)
                    old = self.db.execute(
                        "SELECT loyalty_member, email FROM traits WHERE customer_id = ?", (merged,)
                    ).fetchone()
                    if old:
                        self._set_traits(canonical, {"loyalty_member": old[0], "email": old[1]}, keep_existing=True)
                canonical = self._login(customer_id, device_id, session_id, at)
                if traits:
                    self._set_traits(canonical, traits)
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
        return canonical

    def _set_traits(self, customer: str, traits: dict, keep_existing: bool = False) -> None:
        loyalty = traits.get("loyalty_member")
        loyalty = None if loyalty is None else int(bool(loyalty))
        pick = "COALESCE(traits.{0}, excluded.{0})" if keep_existing else "COALESCE(excluded.{0}, traits.{0})"
        self.db.execute(
            "INSERT INTO traits VALUES (?, ?, ?) ON CONFLICT(customer_id) DO UPDATE SET "
            f"loyalty_member = {pick.format('loyalty_member')}, email = {pick.format('email')}",
            (customer, loyalty, traits.get("email")),
        )

    def owner(self, kind: str, value: str) -> str | None:
        _check_kind(kind)
        row = self.reader.execute("SELECT customer_id FROM links WHERE key = ?", (f"{kind}:{value}",)).fetchone()
        return row[0] if row else (value if kind == "customer" else None)

    def members(self, customer: str) -> set[str]:
        return {row[0] for row in self.reader.execute("SELECT key FROM links WHERE customer_id = ?", (customer,))}

    def _candidates(self, keys: IdentityKeys, limit: int, purchases_only: bool) -> list[dict]:
        clauses, params = [], []
        for column, values in (
            ("customer_id", keys.customers),
            ("device_id", keys.devices),
            ("session_id", keys.sessions),
        ):
            if values:
                clauses.append(f"{column} IN ({', '.join('?' * len(values))})")
                params.extend(sorted(values))
        if not clauses:
            return []
        where = f"({' OR '.join(clauses)}) AND {_NOT_FEEDBACK}"
        if purchases_only:
            # `+event_type` keeps SQLite on the identity indexes: the event-type index would walk every purchase.
            where = f"({where}) AND +event_type IN ({', '.join('?' * len(PURCHASE_EVENTS))})"
            params.extend(PURCHASE_EVENTS)
        # Anonymous events of other shoppers never match `owns`, so a generous limit keeps enough owned ones.
        rows = self.reader.execute(
            f"SELECT {self._select} FROM events WHERE {where} ORDER BY event_time DESC, seq DESC LIMIT ?",
            (*params, limit * 4 + 50),
        ).fetchall()
        return [self._event(row) for row in rows]

    def impressed(self, recommendation_ids: Iterable[str]) -> set[str]:
        if "recommendation_id" not in self._columns:
            return set()
        found = set()
        for chunk in _chunks(sorted(set(recommendation_ids))):
            rows = self.reader.execute(
                f"SELECT DISTINCT recommendation_id FROM events WHERE recommendation_id IN ({', '.join('?' * len(chunk))})"
                " AND event_type = 'impression'",
                chunk,
            )
            found.update(row[0] for row in rows)
        return found

    def cart_adds(self, since_ms: int) -> list[dict]:
        rows = self.reader.execute(
            f"SELECT {self._select} FROM events WHERE event_type = 'add_to_cart' AND event_time >= ?",
            (since_ms,),
        ).fetchall()
        return [self._event(row) for row in rows]

    def traits(self, customer: str) -> dict:
        row = self.reader.execute(
            "SELECT loyalty_member, email FROM traits WHERE customer_id = ?", (customer,)
        ).fetchone()
        if not row:
            return {}
        return {
            k: v
            for k, v in (("loyalty_member", None if row[0] is None else bool(row[0])), ("email", row[1]))
            if v is not None
        }

    def customers(self) -> list[str]:
        rows = self.reader.execute("SELECT DISTINCT customer_id FROM links WHERE key LIKE 'customer:%' ORDER BY 1")
        return [row[0] for row in rows]

    def iter_events(self, after_seq: int = 0, chunk: int = 10_000) -> Iterator[dict]:
        while True:
            rows = self.reader.execute(
                f"SELECT {self._select} FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (after_seq, chunk)
            ).fetchall()
            if not rows:
                return
            for row in rows:
                yield self._event(row)
            after_seq = rows[-1][0]

    def count(self) -> int:
        return int(self.reader.execute("SELECT COUNT(*) FROM events").fetchone()[0])

    def column_chunks(self, columns, event_types=None, chunk: int = 200_000):
        present = [c for c in columns if c in self._columns]
        where = f"WHERE event_type IN ({', '.join('?' * len(event_types))})" if event_types else ""
        cursor = self.reader.execute(f"SELECT {', '.join(present)} FROM events {where} ORDER BY seq", event_types or ())
        while rows := cursor.fetchmany(chunk):
            values = dict(zip(present, map(list, zip(*rows))))
            yield {c: values[c] if c in values else [None] * len(rows) for c in columns}

    def close(self) -> None:
        for connection in self._readers:
            connection.close()
        self.db.close()


# -------------------------------------------------------------------------------------------------- Redis

# Both scripts run atomically inside Redis; with appendfsync=always their effects are fsynced before the
# reply. KEYS are not declared (one Redis instance, not a cluster): every key starts with the prefix.
_LINK_LUA = """
local function link(p, key, customer)
  local old = redis.call('HGET', p .. 'links', key)
  if old == customer then return end
  if old then redis.call('SREM', p .. 'members:' .. old, key) end
  redis.call('HSET', p .. 'links', key, customer)
  redis.call('SADD', p .. 'members:' .. customer, key)
end
local function login(p, c, d, s)
  local canonical = redis.call('HGET', p .. 'links', 'customer:' .. c) or c
  link(p, 'customer:' .. c, canonical)
  if d and d ~= '' then link(p, 'device:' .. d, canonical) end
  if s and s ~= '' then link(p, 'session:' .. s, canonical) end
  redis.call('SADD', p .. 'customers', canonical)
  return canonical
end
"""
_APPEND_LUA = (
    _LINK_LUA
    + """
local p = ARGV[1]
local accepted = 0
local existing = {}
for i = 2, #ARGV do
  local e = cjson.decode(ARGV[i])
  if redis.call('HSETNX', p .. 'ids', e.event_id, 0) == 0 then
    existing[#existing + 1] = i - 2
    existing[#existing + 1] = redis.call('HGET', p .. 'ev', redis.call('HGET', p .. 'ids', e.event_id))
  else
    local seq = redis.call('INCR', p .. 'seq')
    redis.call('HSET', p .. 'ids', e.event_id, seq)
    e.seq = seq
    redis.call('HSET', p .. 'ev', seq, cjson.encode(e))
    local purchase = PURCHASE_TEST
    if FEEDBACK_TEST then
      if e.event_type == 'impression' and e.recommendation_id then redis.call('SADD', p .. 'impressed', e.recommendation_id) end
    else
      for _, kind in ipairs({'customer', 'device', 'session'}) do
        local value = e[kind .. '_id']
        if value then
          redis.call('ZADD', p .. 'k:' .. kind .. ':' .. value, e.event_time, seq)
          if purchase then redis.call('ZADD', p .. 'pk:' .. kind .. ':' .. value, e.event_time, seq) end
        end
      end
    end
    if e.event_type == 'add_to_cart' then redis.call('ZADD', p .. 'cart_adds', e.event_time, seq) end
    if e.customer_id then login(p, e.customer_id, e.device_id, e.session_id) end
    accepted = accepted + 1
  end
end
return {accepted, existing}
"""
)
# The purchase test of the Lua script, written from PURCHASE_EVENTS (data.features).
_APPEND_LUA = _APPEND_LUA.replace("PURCHASE_TEST", " or ".join(f"e.event_type == '{t}'" for t in PURCHASE_EVENTS))
# Feedback (data.schema.FEEDBACK_TYPES) stays out of the profile indexes; impressions are indexed by list.
_APPEND_LUA = _APPEND_LUA.replace("FEEDBACK_TEST", " or ".join(f"e.event_type == '{t}'" for t in FEEDBACK_TYPES))
_IDENTIFY_LUA = (
    _LINK_LUA
    + """
local p, c, d, s, loyalty, email = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local canonical = redis.call('HGET', p .. 'links', 'customer:' .. c) or c
for i = 7, #ARGV do
  local merged = redis.call('HGET', p .. 'links', 'customer:' .. ARGV[i]) or ARGV[i]
  if merged ~= canonical then
    for _, key in ipairs(redis.call('SMEMBERS', p .. 'members:' .. merged)) do link(p, key, canonical) end
    link(p, 'customer:' .. ARGV[i], canonical)
    link(p, 'customer:' .. merged, canonical)
    redis.call('DEL', p .. 'members:' .. merged)
    redis.call('SREM', p .. 'customers', merged)
    for _, field in ipairs({'loyalty_member', 'email'}) do
      local value = redis.call('HGET', p .. 'traits:' .. merged, field)
      if value then redis.call('HSETNX', p .. 'traits:' .. canonical, field, value) end
    end
  end
end
canonical = login(p, c, d, s)
if loyalty ~= '' then redis.call('HSET', p .. 'traits:' .. canonical, 'loyalty_member', loyalty) end
if email ~= '' then redis.call('HSET', p .. 'traits:' .. canonical, 'email', email) end
return canonical
"""
)

# The newest `n` events over several identity keys, in one round trip (the profile read of `recommend`).
_RECENT_LUA = """
local p, index, n = ARGV[1], ARGV[2], tonumber(ARGV[3])
local found, seen = {}, {}
for i = 4, #ARGV do
  local hits = redis.call('ZREVRANGE', p .. index .. ARGV[i], 0, n - 1, 'WITHSCORES')
  for j = 1, #hits, 2 do
    local seq = tonumber(hits[j])
    if not seen[seq] then
      seen[seq] = true
      found[#found + 1] = {seq, tonumber(hits[j + 1])}
    end
  end
end
if #found == 0 then return {} end
table.sort(found, function(a, b) if a[2] ~= b[2] then return a[2] > b[2] end return a[1] > b[1] end)
local seqs = {}
for i = 1, math.min(n, #found) do seqs[i] = found[i][1] end
return redis.call('HMGET', p .. 'ev', unpack(seqs))
"""


class RedisStore(EventStore):
    """Events in Redis hashes, one sorted set (by event time) per customer, device and session."""

    def __init__(self, url: str, prefix: str = "intentrec:", durable: bool = True):
        import redis

        self.url, self.prefix = url, prefix
        self.redis = redis.Redis.from_url(url, decode_responses=True, socket_timeout=10)
        try:
            config = self.redis.config_get("append*")
        except redis.exceptions.ConnectionError as error:
            raise ConfigError(
                f"events.store={url!r}: cannot connect to Redis ({error}); start redis-server "
                "(see README, 'Personalization platform') or use an sqlite:/// store"
            ) from error
        if durable and (config.get("appendonly") != "yes" or config.get("appendfsync") != "always"):
            raise ConfigError(
                f"events.store={url!r}: Redis runs with appendonly={config.get('appendonly')!r}, "
                f"appendfsync={config.get('appendfsync')!r}, so an acknowledged event could be lost in a crash; "
                "expected appendonly=yes and appendfsync=always: start redis-server with "
                "'--appendonly yes --appendfsync always' (or CONFIG SET both)"
            )
        # Version-1 stores hold the same JSON without the list fields, which read as empty: nothing to migrate.
        if int(self.redis.get(self.prefix + "schema_version") or 0) < SCHEMA_VERSION:
            self.redis.set(self.prefix + "schema_version", SCHEMA_VERSION)
        self._append = self.redis.register_script(_APPEND_LUA)
        self._identify = self.redis.register_script(_IDENTIFY_LUA)
        self._recent = self.redis.register_script(_RECENT_LUA)

    def append(self, events: list[dict]) -> AppendResult:
        if not events:
            return AppendResult(0, 0)
        payload = [json.dumps({k: v for k, v in e.items() if v is not None and k in EVENT_FIELDS}) for e in events]
        accepted, existing = self._append(args=[self.prefix, *payload])
        stored = [(int(existing[i]), self._event(existing[i + 1])) for i in range(0, len(existing), 2)]
        return AppendResult(int(accepted), *_classify(events, stored))

    def identify(self, customer_id, device_id=None, session_id=None, merge_customer_ids=(), traits=None) -> str:
        traits = traits or {}
        loyalty = traits.get("loyalty_member")
        return self._identify(
            args=[
                self.prefix,
                customer_id,
                device_id or "",
                session_id or "",
                "" if loyalty is None else str(int(bool(loyalty))),
                traits.get("email") or "",
                *merge_customer_ids,
            ]
        )

    def owner(self, kind: str, value: str) -> str | None:
        _check_kind(kind)
        found = self.redis.hget(self.prefix + "links", f"{kind}:{value}")
        return found or (value if kind == "customer" else None)

    def members(self, customer: str) -> set[str]:
        return set(self.redis.smembers(f"{self.prefix}members:{customer}"))

    def _candidates(self, keys: IdentityKeys, limit: int, purchases_only: bool) -> list[dict]:
        members = [
            f"{kind}:{value}"
            for kind, values in (("customer", keys.customers), ("device", keys.devices), ("session", keys.sessions))
            for value in sorted(values)
        ]
        if not members:
            return []
        index = "pk:" if purchases_only else "k:"
        found = self._recent(args=[self.prefix, index, limit * 4 + 50, *members])
        return [self._event(raw) for raw in found if raw]

    def impressed(self, recommendation_ids: Iterable[str]) -> set[str]:
        ids = sorted(set(recommendation_ids))
        found = set()
        for chunk in _chunks(ids):
            found.update(i for i, hit in zip(chunk, self.redis.smismember(self.prefix + "impressed", chunk)) if hit)
        return found

    @staticmethod
    def _event(raw: str) -> dict:
        stored = json.loads(raw)
        return {"seq": stored.pop("seq"), **{f: stored.get(f) for f in EVENT_FIELDS}}

    def cart_adds(self, since_ms: int) -> list[dict]:
        seqs = self.redis.zrangebyscore(self.prefix + "cart_adds", since_ms, "+inf")
        if not seqs:
            return []
        return [self._event(raw) for raw in self.redis.hmget(self.prefix + "ev", seqs) if raw]

    def traits(self, customer: str) -> dict:
        stored = self.redis.hgetall(f"{self.prefix}traits:{customer}")
        out = {}
        if "loyalty_member" in stored:
            out["loyalty_member"] = stored["loyalty_member"] == "1"
        if stored.get("email"):
            out["email"] = stored["email"]
        return out

    def customers(self) -> list[str]:
        return sorted(self.redis.smembers(self.prefix + "customers"))

    def iter_events(self, after_seq: int = 0, chunk: int = 10_000) -> Iterator[dict]:
        last = int(self.redis.get(self.prefix + "seq") or 0)
        for start in range(after_seq + 1, last + 1, chunk):
            seqs = list(range(start, min(start + chunk, last + 1)))
            for raw in self.redis.hmget(self.prefix + "ev", seqs):
                if raw:
                    yield self._event(raw)

    def count(self) -> int:
        return int(self.redis.hlen(self.prefix + "ids"))

    def close(self) -> None:
        self.redis.close()


def open_store(url: str, readonly: bool = False) -> EventStore:
    """`sqlite:///<path>` (relative or absolute path) or `redis://host:port/db` -> a store."""
    parsed = urlparse(url)
    if parsed.scheme == "sqlite":
        path = url[len("sqlite:///") :] if url.startswith("sqlite:///") else ""
        if not path:
            raise ConfigError(f"events.store={url!r}: expected sqlite:///<path to the database file>")
        return SQLiteStore(path, readonly=readonly)
    if parsed.scheme in ("redis", "rediss", "unix"):
        return RedisStore(url)
    raise ConfigError(
        f"events.store={url!r}: unknown store; expected sqlite:///<path> (embedded) or redis://host:port/db"
    )
