"""Playlist stores: where each week's published playlists live and are served from.

One module per backend (``sqlite``, ``redis``, ``scylla``) over the shared value codec (``codec``)
and the contract every store keeps (``contract``); ``open_store`` picks one from a URL.

One value per (week, user): the user's tracks ordered by position, encoded once at publish time as
the JSON array the HTTP API returns (``[{"position", "track_id", "score", "source",
"is_exploration", "artist_id", "genre"}, ...]``), zlib-compressed (4.3 kB -> ~1 kB for 30 tracks;
inflating costs ~10 us), so a GET is one key lookup and no JSON re-encoding.

Every ``write_week`` writes a fresh *version* of the week next to whatever is there, and only when
all of it is written does it register that version in the store's week registry (one atomic write).
Readers resolve ``current_week`` -> registered version -> the user's value, so a crashed or failed
write is never visible, rewriting a week replaces it as a whole (users absent from the rewrite
disappear, nothing is duplicated), and the previous version is deleted afterwards (Scylla: left to
the row TTL). ``set_current_week`` is the single pointer flip that makes a written week live.
One publisher at a time per store; any number of readers. ``write_week`` is three public steps,
``begin_write`` (driver) -> ``write_users`` / ``write_encoded`` (anywhere that reaches the store:
Spark executors for Redis and Scylla, whose store objects pickle as their settings) ->
``commit_write`` (driver), so that ``serving.publish`` writes a Spark week from the executors.

URLs (``open_store``), all connecting lazily on first use:

- ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db`` (SQLAlchemy convention), WAL mode.
- ``redis://host:port/db`` (``rediss://`` for TLS); password only from ``DW_REDIS_PASSWORD``.
- ``scylla://host1,host2[:port]/keyspace``; credentials only from ``DW_SCYLLA_USERNAME`` /
  ``DW_SCYLLA_PASSWORD``.

Query parameters tune a store (e.g. ``?timeout_ms=250&batch_users=2000``); see each class. Every
store takes ``keep_weeks=N``: the written weeks publishing keeps (the newest N plus the live one;
``publish_week`` drops the rest). A store whose values expire (Redis ``ttl_days``, Scylla's row TTL)
refuses a retention longer than the expiry allows (``check_retention``).

Crash safety: a publisher killed at any instant leaves the registered weeks and the pointer as they
were; what it had written is unreferenced garbage that the next ``write_week`` reclaims (SQLite and
Redis list in-flight and superseded versions in a ``writes``/``writing`` set in the same atomic step
that registers a week; Scylla leaves them to the row TTL).

Credentials never appear in URLs (refused), reprs, error messages or metadata; ``redact_url`` is what
may be shown of a URL.
"""

from __future__ import annotations

from dw_assets.serving.stores.codec import (
    MAX_POSITION,
    MAX_USER_ID,
    PLAYLIST_COLUMNS,
    TRACK_FIELDS,
    Progress,
    check_week,
    decode_tracks,
    encode_playlists,
    iter_user_batches,
    new_version,
    tracks_json,
    validate_playlists,
)
from dw_assets.serving.stores.contract import (
    CURRENT_WEEK,
    PlaylistStore,
    Registry,
    RegistryCachedStore,
    StoreError,
    StoreUnavailable,
    redact_url,
    url_has_credentials,
)
from dw_assets.serving.stores.redis import RedisStore
from dw_assets.serving.stores.scylla import (
    ScyllaSettings,
    ScyllaStore,
    cql_statements,
    parse_replication,
    token_ranges,
)
from dw_assets.serving.stores.sqlite import SQLiteStore

__all__ = [
    "CURRENT_WEEK", "MAX_POSITION", "MAX_USER_ID", "PLAYLIST_COLUMNS", "TRACK_FIELDS", "PlaylistStore", "Progress",
    "RedisStore", "Registry", "RegistryCachedStore", "SQLiteStore", "ScyllaSettings", "ScyllaStore", "StoreError",
    "StoreUnavailable", "check_week", "cql_statements", "decode_tracks", "encode_playlists", "iter_user_batches",
    "new_version", "open_store", "parse_replication", "redact_url", "token_ranges", "tracks_json",
    "url_has_credentials", "validate_playlists",
]

_STORES: dict[str, type] = {"sqlite": SQLiteStore, "redis": RedisStore, "rediss": RedisStore, "scylla": ScyllaStore}


def open_store(url: str) -> PlaylistStore:
    """The store a URL names (``sqlite:///path.db``, ``redis://host:port/db``,
    ``scylla://host1,host2/keyspace``). Makes no connection: stores connect on first use and
    reconnect after failures."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in _STORES:
        raise ValueError(f"unknown store URL {redact_url(url)!r}: expected sqlite:///path.db, "
                         "redis://host:port/db or scylla://host1,host2/keyspace")
    return _STORES[scheme].from_url(url)
