"""The SQL store's table: its columns, how a row holds a record, and its statements.

The table is the same on every database but for the types MySQL needs; the
statements of the request path are built once per store, each for its dialect,
and take a record's values as ``new_<column>`` parameters (:func:`record_params`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, Final, NamedTuple

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite

from ..errors import ConfigError
from ..users import MAX_USER_ID
from .base import CorruptRecord, Record

__all__ = [
    "LEASE_KEY",
    "Statements",
    "build_statements",
    "check_table_name",
    "record_columns",
    "record_params",
    "row_record",
    "session_table",
]

#: The key of the purge lease row. It is not hex, so no session key can collide.
LEASE_KEY: Final = "~purge-lease"

# Identifiers derived from the table name ("ix_<name>_expires_at") must stay within
# PostgreSQL's 63 and MySQL's 64 characters.
_TABLE_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,47}")

# MySQL's BLOB holds 64 KiB; LONGBLOB holds 4 GiB, bounded by max_allowed_packet.
_BLOB: Final = sa.LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb")

# MySQL compares strings case-insensitively by default, which would make "Alice" and
# "alice" one user; binary collations compare them as the application does.
_KEY: Final = sa.String(64).with_variant(
    mysql.VARCHAR(64, charset="ascii", collation="ascii_bin"), "mysql", "mariadb"
)
# Every dialect counts a VARCHAR's length in characters, as MAX_USER_ID does.
_USER: Final = sa.String(MAX_USER_ID).with_variant(
    mysql.VARCHAR(MAX_USER_ID, charset="utf8mb4", collation="utf8mb4_bin"), "mysql", "mariadb"
)

# The columns a record's values go to, in the order of record_columns.
_VALUE_COLUMNS: Final = (
    "data",
    "meta",
    "version",
    "created_at",
    "expires_at",
    "last_seen",
    "user_id",
)


def check_table_name(name: object) -> str:
    """Return *name* if it can name the sessions table, else raise :exc:`ConfigError`."""
    if not isinstance(name, str) or _TABLE_NAME.fullmatch(name) is None:
        raise ConfigError(
            f"store option 'table_name' must be an identifier of letters, digits and"
            f" underscores, at most 48 characters, not starting with a digit; got {name!r}"
        )
    return name


def session_table(name: str, metadata: sa.MetaData) -> sa.Table:
    """Return the sessions table called *name*, with its indexes, in *metadata*."""
    return sa.Table(
        name,
        metadata,
        sa.Column("id_hash", _KEY, primary_key=True),
        sa.Column("data", _BLOB, nullable=False),
        sa.Column("meta", _BLOB, nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("expires_at", sa.Double(), nullable=False),
        sa.Column("last_seen", sa.Double(), nullable=False),
        sa.Column("user_id", _USER, nullable=True),
        sa.Index(f"ix_{name}_expires_at", "expires_at"),
        sa.Index(f"ix_{name}_user_id", "user_id"),
    )


def record_columns(table: sa.Table) -> list[sa.Column[Any]]:
    """The columns :func:`row_record` reads, in a select list."""
    return [table.c[name] for name in _VALUE_COLUMNS]


def row_record(row: Sequence[Any]) -> Record:
    """Return the record a row selected with :func:`record_columns` holds.

    Further columns after those are ignored.

    :raises CorruptRecord: A column holds a value of another type than the column's,
        which only SQLite, whose columns take any value, lets a row have. The message
        names the columns, never what they hold.
    """
    # Unpacking by position skips the name lookup of each Row attribute, which costs
    # more than the conversions.
    data, meta, version, created_at, expires_at, last_seen, user_id = row[:7]
    try:
        # Every driver reads a binary column as bytes; bytes() of anything else
        # would make an int into that many zero bytes, and text into an error.
        return Record(
            data=data if type(data) is bytes else _binary(data),
            version=int(version),
            created_at=float(created_at),
            expires_at=float(expires_at),
            last_seen=float(last_seen),
            user_id=user_id if user_id is None or type(user_id) is str else _text(user_id),
            meta=meta if type(meta) is bytes else _binary(meta),
        )
    except (TypeError, ValueError, OverflowError):
        pass
    wrong = []
    for (name, convert), value in zip(_CONVERSIONS, row[:7], strict=True):
        try:
            convert(value)
        except (TypeError, ValueError, OverflowError):
            wrong.append(name)
    raise CorruptRecord(f"a value of the wrong type in column(s) {', '.join(wrong) or '?'}")


def _binary(value: object) -> bytes:
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError(type(value).__name__)
    return bytes(value)


def _text(value: object) -> str | None:
    if value is not None and not isinstance(value, str):
        raise TypeError(type(value).__name__)
    return value


# The conversion of each column of record_columns, in its order.
_CONVERSIONS: Final[tuple[tuple[str, Callable[[Any], object]], ...]] = (
    ("data", _binary),
    ("meta", _binary),
    ("version", int),
    ("created_at", float),
    ("expires_at", float),
    ("last_seen", float),
    ("user_id", _text),
)


def record_params(record: Record) -> dict[str, Any]:
    """Return the ``new_<column>`` parameters that store *record* with :class:`Statements`."""
    return {
        "new_data": record.data,
        "new_meta": record.meta,
        "new_version": record.version,
        "new_created_at": record.created_at,
        "new_expires_at": record.expires_at,
        "new_last_seen": record.last_seen,
        "new_user_id": record.user_id,
    }


class Statements(NamedTuple):
    """The statements of the request path, built once per store.

    Building a statement and its cache key costs SQLAlchemy more than running it on a
    local database, so they are built here with bound parameters: ``key``, ``now``,
    ``expected`` (a version), ``expires`` and ``seen`` (times), and ``new_<column>``
    for the values of a record (see :func:`record_params`). A row is live while its
    ``expires_at`` is after ``now``; a tombstone is a row of version ``0``.
    """

    #: The live row under ``key``.
    load: sa.Select[Any]
    #: The live row under ``key``, locked until the end of the transaction (``FOR
    #: UPDATE``; on SQLite, which has no row locks, the same as :attr:`load`).
    load_for_update: sa.Select[Any]
    #: The compare-and-set: write the row if its version is ``expected`` and it is live.
    update_if_version: sa.Update
    #: Move ``expires_at`` and ``last_seen`` of a live row, not a tombstone, forward,
    #: never back.
    refresh: sa.Update
    #: :attr:`refresh`, of a row whose version is ``expected`` only.
    refresh_if_version: sa.Update
    #: Insert, or overwrite an expired row, in one statement, so that it writes
    #: nothing only where a live row is; ``None`` on dialects without ``ON
    #: CONFLICT``, which use :attr:`insert` then :attr:`overwrite_expired`.
    insert_unless_live: sa.Insert | None
    #: Insert a row under ``key``, failing if any row is there.
    insert: sa.Insert
    #: Overwrite the row under ``key`` if it has expired.
    overwrite_expired: sa.Update
    #: Delete the row under ``key`` if its version is ``expected`` and it is live:
    #: the compare-and-delete of a save that replaces a given version.
    delete_if_version: sa.Delete
    #: Delete the row under ``key`` if it is live and no tombstone.
    delete_live_session: sa.Delete
    #: Delete the row under ``key``, whatever it holds.
    delete_any: sa.Delete


def build_statements(table: sa.Table, dialect: str) -> Statements:
    """Build the request path's statements on *table* for the *dialect* named."""
    c = table.c
    key = sa.bindparam("key", type_=c.id_hash.type)
    now: sa.BindParameter[float] = sa.bindparam("now", type_=sa.Double())
    expires: sa.BindParameter[float] = sa.bindparam("expires", type_=sa.Double())
    seen: sa.BindParameter[float] = sa.bindparam("seen", type_=sa.Double())
    new = {name: sa.bindparam(f"new_{name}", type_=c[name].type) for name in _VALUE_COLUMNS}
    expected = sa.bindparam("expected", type_=c.version.type)
    # A refresh moves each time forward, never back.
    times = {
        "expires_at": sa.case((c.expires_at < expires, expires), else_=c.expires_at),
        "last_seen": sa.case((c.last_seen < seen, seen), else_=c.last_seen),
    }
    insert_unless_live: sa.Insert | None = None
    if dialect in ("postgresql", "sqlite"):
        upsert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)
        upsert = upsert.values(id_hash=key, **new)
        insert_unless_live = upsert.on_conflict_do_update(
            index_elements=[c.id_hash],
            set_={name: upsert.excluded[name] for name in new},
            where=c.expires_at <= now,
        ).execution_options(preserve_rowcount=True)  # an INSERT's rowcount, when asked
    live: sa.ColumnElement[bool] = c.expires_at > now
    dead: sa.ColumnElement[bool] = c.expires_at <= now
    if dialect in ("mysql", "mariadb"):
        # The same tests, in a form no index can serve. On a small table MySQL may
        # otherwise find a row by key through the expires_at index, locking that
        # index entry before the row: the opposite order of a locked save, which
        # locks the row by key and then rewrites that entry, so each would wait for
        # the other until one of them is rolled back as a deadlock.
        live = c.expires_at - now > 0
        dead = c.expires_at - now <= 0
    load = sa.select(*record_columns(table)).where(c.id_hash == key, live)
    return Statements(
        load=load,
        load_for_update=load.with_for_update(),
        update_if_version=sa.update(table)
        .where(c.id_hash == key, c.version == expected, live)
        .values(new),
        refresh=sa.update(table).where(c.id_hash == key, live, c.version > 0).values(times),
        refresh_if_version=sa.update(table)
        .where(c.id_hash == key, live, c.version > 0, c.version == expected)
        .values(times),
        insert_unless_live=insert_unless_live,
        insert=sa.insert(table).values(id_hash=key, **new),
        overwrite_expired=sa.update(table).where(c.id_hash == key, dead).values(new),
        delete_if_version=sa.delete(table).where(c.id_hash == key, c.version == expected, live),
        delete_live_session=sa.delete(table).where(c.id_hash == key, live, c.version > 0),
        delete_any=sa.delete(table).where(c.id_hash == key),
    )
