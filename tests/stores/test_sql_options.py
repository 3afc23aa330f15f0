"""The SQL store's URLs and options, and what its messages and logs show of them: never
a password, never a parameter or session data.
"""

from __future__ import annotations

import logging
import re
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.helpers import (
    SQL_SERVER_KINDS,
    OpenSQL,
    locked_elsewhere,
    never_build,
)
from wsgisession.errors import ConfigError, StoreError
from wsgisession.stores import LockTimeout, open_store
from wsgisession.stores.sql import SQLStore
from wsgisession.testing import make_record, new_key
from wsgisession.users import MAX_USER_ID


@pytest.mark.parametrize(
    ("options", "named"),
    [
        pytest.param({"pool_sise": 5}, "pool_sise", id="unknown"),
        pytest.param({"pool_size": "5"}, "pool_size", id="pool_size-str"),
        pytest.param({"pool_size": True}, "pool_size", id="pool_size-bool"),
        pytest.param({"pool_size": -1}, "pool_size", id="pool_size-negative"),
        pytest.param({"max_overflow": 1.5}, "max_overflow", id="max_overflow-float"),
        pytest.param({"pool_recycle": "1h"}, "pool_recycle", id="pool_recycle-str"),
        pytest.param({"pool_pre_ping": 1}, "pool_pre_ping", id="pool_pre_ping-int"),
        pytest.param({"pool_timeout": None}, "pool_timeout", id="pool_timeout-none"),
        pytest.param({"connect_args": [("timeout", 1)]}, "connect_args", id="connect_args-list"),
        pytest.param({"cleanup_batch": 0}, "cleanup_batch", id="cleanup_batch-zero"),
        pytest.param({"cleanup_batch": "10"}, "cleanup_batch", id="cleanup_batch-str"),
        pytest.param({"echo": "yes"}, "echo", id="echo-str"),
        pytest.param({"table_name": "my sessions"}, "table_name", id="table-space"),
        pytest.param({"table_name": "1sessions"}, "table_name", id="table-digit"),
        pytest.param({"table_name": "s; DROP TABLE x"}, "table_name", id="table-injection"),
        pytest.param({"table_name": "s" * 49}, "table_name", id="table-too-long"),
        pytest.param({"table_name": 7}, "table_name", id="table-int"),
    ],
)
def test_bad_options_raise_config_error(
    options: dict[str, Any], named: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=named):
        open_store(f"sqlite:///{tmp_path / 'x.db'}", **options)


def test_good_options_are_accepted(tmp_path: Path) -> None:
    with open_store(
        f"sqlite:///{tmp_path / 'x.db'}",
        table_name="web_sessions",
        pool_size=3,
        max_overflow=2,
        pool_recycle=1800,
        pool_pre_ping=True,
        pool_timeout=2.5,
        connect_args={"timeout": 10},
        cleanup_batch=50,
        echo=False,
    ) as store:
        assert isinstance(store, SQLStore)
        assert store.table.name == "web_sessions"
        assert store.cleanup_batch == 50
        store.ping()


@pytest.mark.parametrize(
    ("url", "hint"),
    [
        pytest.param("nosuchdb://localhost/db", "'sqlalchemy>=2.0'", id="dialect"),
        pytest.param(
            "postgresql+nosuchdriver://u@h/db", "'sqlalchemy>=2.0' 'psycopg[binary]>=3.1'", id="pg"
        ),
        pytest.param(
            "mysql+nosuchdriver://u@h/db", "'sqlalchemy>=2.0' 'pymysql>=1.1'", id="mysql"
        ),
        pytest.param(
            "mariadb+nosuchdriver://u@h/db", "'sqlalchemy>=2.0' 'pymysql>=1.1'", id="mariadb"
        ),
    ],
)
def test_a_missing_dialect_or_driver_names_the_packages_to_install(url: str, hint: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"pip install {hint}")):
        SQLStore.from_url(url)


def test_a_url_without_a_driver_whose_default_is_missing_names_ours(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # mysql:// means MySQLdb to SQLAlchemy, which installing PyMySQL would not bring
    # (CI installs it for its second run of the MariaDB tests: here it is missing).
    monkeypatch.setitem(sys.modules, "MySQLdb", None)
    with pytest.raises(
        ConfigError, match=re.escape("name its driver in the URL, mysql+pymysql://")
    ):
        SQLStore.from_url("mysql://u@h/db")


@pytest.mark.parametrize(
    ("url", "secret"),
    [
        pytest.param("not a url", "not a url", id="words"),
        pytest.param("postgresql+psycopg://u:secretpw@h:port/db", "secretpw", id="port"),
        # SQLAlchemy reads "w0rd@h:5432" as the port, and its complaint quotes it.
        pytest.param("postgresql+psycopg://u:p@ss:w0rd@h:5432/db", "w0rd", id="at-and-colon"),
    ],
)
def test_an_unreadable_url_raises_config_error(url: str, secret: str) -> None:
    with pytest.raises(ConfigError) as info:
        SQLStore.from_url(url)
    assert secret not in str(info.value)
    assert "percent-encode" in str(info.value)


@pytest.mark.parametrize(
    "url",
    ["sqlite://", "sqlite:///:memory:", "sqlite:///file:x?mode=memory&uri=true"],
)
def test_in_memory_sqlite_is_refused(url: str) -> None:
    with pytest.raises(ConfigError, match="in-memory"):
        SQLStore.from_url(url)


def test_a_url_is_not_an_engine() -> None:
    with pytest.raises(ConfigError, match="from_url"):
        SQLStore("sqlite:///x.db")  # type: ignore[arg-type]


def test_an_asyncio_driver_is_refused() -> None:
    with pytest.raises(ConfigError, match="asyncio"):
        SQLStore.from_url("postgresql+psycopg_async://u@127.0.0.1/db")


@pytest.mark.parametrize(
    ("url", "dialect"),
    [
        pytest.param("postgres://u@127.0.0.1:1/db", "postgresql", id="heroku-style"),
        # Schemes are case-insensitive, as for the other stores; SQLAlchemy said to
        # install a driver that was there.
        pytest.param("SQLITE:///sessions.db", "sqlite", id="upper-case"),
        pytest.param("PostgreSQL+psycopg://u@127.0.0.1:1/db", "postgresql", id="mixed-case"),
    ],
)
def test_a_scheme_is_read_as_sqlalchemy_spells_it(url: str, dialect: str) -> None:
    with open_store(url) as store:
        assert isinstance(store, SQLStore)
        assert store.engine.dialect.name == dialect


def test_passwords_never_appear_in_errors() -> None:
    """Building never connects; the failure on first use names the URL, masked."""
    with SQLStore.from_url("postgresql+psycopg://postgres:secretpw@127.0.0.1:1/test") as store:
        with pytest.raises(StoreError) as info:
            store.ping()
    assert "secretpw" not in str(info.value)
    assert "***" in str(info.value)
    assert isinstance(info.value.__cause__, sa.exc.SQLAlchemyError)


def test_echo_logs_statements_but_no_parameters(
    sql_kind: str, sql_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The ``echo`` option logs every statement; never the password, a key or a record."""
    url = sa.make_url(sql_url)
    if sql_kind == "postgresql":
        url = url.set(password=_PASSWORD)  # the test server trusts loopback
    caplog.set_level(logging.DEBUG)
    store = SQLStore.from_url(
        url.render_as_string(hide_password=False),
        table_name=f"test_sessions_{uuid.uuid4().hex[:12]}",
        echo=True,
    )
    try:
        key = new_key()
        record = make_record(b"topsecret-data", user_id="s3cret-user")
        assert store.save(key, record, expected_version=None)
        assert store.load(key) == record
        assert store.user_records("s3cret-user") != []
    finally:
        store.table.drop(store.engine, checkfirst=True)
        store.close()
    logged = "\n".join(entry.getMessage() for entry in caplog.records)
    assert "INSERT" in logged
    for secret in ("s3cr", _ENCODED, key, "topsecret", b"topsecret".hex(), "s3cret-user"):
        assert secret not in logged


@pytest.mark.parametrize("sql_kind", SQL_SERVER_KINDS)
def test_session_data_never_appears_in_errors(sql_url: str) -> None:
    """Even on an engine built without hide_parameters, errors don't carry the data."""
    engine = sa.create_engine(sql_url)
    store = SQLStore(engine, table_name=f"test_sessions_{uuid.uuid4().hex[:12]}")
    try:
        too_long = make_record(b"topsecret-data", user_id="u" * 300)
        with pytest.raises(StoreError) as info:
            store.save(new_key(), too_long, expected_version=None)
        assert "topsecret" not in str(info.value)
        assert isinstance(info.value.__cause__, sa.exc.DBAPIError)
    finally:
        store.table.drop(engine, checkfirst=True)
        engine.dispose()


# A password the test servers never check (PostgreSQL trusts loopback), holding what
# a URL must percent-encode.
_PASSWORD = "s3cr@t:p/w"


_ENCODED = "s3cr%40t%3Ap%2Fw"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        pytest.param(
            f"postgresql+psycopg://postgres:{_ENCODED}@127.0.0.1:5432/test",
            "postgresql+psycopg://postgres:***@127.0.0.1:5432/test",
            id="postgresql",
        ),
        pytest.param(
            f"mariadb+pymysql://root:{_ENCODED}@127.0.0.1:3306/test",
            "mariadb+pymysql://root:***@127.0.0.1:3306/test",
            id="mariadb",
        ),
        pytest.param(
            f"postgresql+psycopg://postgres@127.0.0.1/test?password={_ENCODED}",
            "postgresql+psycopg://postgres@127.0.0.1/test?password=***",
            id="query",
        ),
    ],
)
def test_the_repr_shows_the_store_with_its_password_masked(url: str, shown: str) -> None:
    with SQLStore.from_url(url, table_name="web_sessions") as store:
        assert repr(store) == f"<SQLStore web_sessions at {shown}>"


@pytest.mark.parametrize("password", ["s3cr@t", _PASSWORD])
@pytest.mark.parametrize("scheme", ["postgresql+psycopg", "mariadb+pymysql"])
def test_a_password_with_a_raw_at_sign_is_refused_unquoted(scheme: str, password: str) -> None:
    """SQLAlchemy cuts the password at its "@" and reads the rest as the host, which the
    driver's connection error then quoted ("failed to resolve host 't@127.0.0.1'"), or
    as the port, which its own complaint quoted."""
    url = f"{scheme}://user:{password}@127.0.0.1/test"
    with pytest.raises(ConfigError, match="percent-encode") as info:
        SQLStore.from_url(url)
    messages = [str(info.value)]
    if password == "s3cr@t":
        with pytest.raises(ConfigError, match="%40") as ready:
            SQLStore(sa.create_engine(url))
        messages.append(str(ready.value))
    for message in messages:
        assert "s3cr" not in message and "t@" not in message and "p/w" not in message


def test_a_password_parameter_is_masked_when_an_asyncio_driver_is_refused() -> None:
    with pytest.raises(ConfigError, match="asyncio") as info:
        SQLStore.from_url(f"postgresql+psycopg_async://u@127.0.0.1/db?password={_ENCODED}")
    assert "s3cr" not in str(info.value)
    assert "password=***" in str(info.value)


@pytest.mark.parametrize("sql_kind", ["postgresql"])
def test_a_percent_encoded_password_works_and_stays_masked(sql_kind: str, sql_url: str) -> None:
    """Every message of a working store on a password URL: a failed statement's too."""
    url = sa.make_url(sql_url).set(password=_PASSWORD).render_as_string(hide_password=False)
    assert _ENCODED in url
    store = SQLStore.from_url(url, table_name=f"test_sessions_{uuid.uuid4().hex[:12]}")
    try:
        key = new_key()
        assert store.save(key, make_record(b"{}"), expected_version=None)
        with pytest.raises(StoreError) as info:
            store.save(
                new_key(),
                make_record(b"{}", user_id="u" * (MAX_USER_ID + 1)),
                expected_version=None,
            )
        messages = [repr(store), str(info.value)]
        with locked_elsewhere(store, key), pytest.raises(LockTimeout) as timeout:
            store.save_locked(key, never_build, timeout=0.1)
        messages.append(str(timeout.value))
        for message in messages:
            assert "s3cr" not in message and _ENCODED not in message
            assert "postgres:***@" in message
    finally:
        store.table.drop(store.engine, checkfirst=True)
        store.close()


@pytest.mark.parametrize("sql_kind", ["mariadb"])
def test_a_refused_password_stays_masked(sql_kind: str, sql_url: str) -> None:
    """The test server's root has no password, so any password is refused."""
    url = sa.make_url(sql_url).set(password=_PASSWORD).render_as_string(hide_password=False)
    with SQLStore.from_url(url) as store, pytest.raises(StoreError) as info:
        store.ping()
    message = str(info.value)
    assert "s3cr" not in message and _ENCODED not in message
    assert ":***@" in message and "1045" in message


@pytest.mark.parametrize(
    ("url", "connect_args", "secret"),
    [
        pytest.param("sqlite:///x.db", {"password": 123456}, "123456", id="sqlite"),
        pytest.param(
            "mariadb+pymysql://u@127.0.0.1/db", {"passwd": 123456}, "123456", id="mariadb"
        ),
        pytest.param(
            "postgresql+psycopg://u@127.0.0.1/db", {"sslpassword": 1234}, "1234", id="postgresql"
        ),
        pytest.param(
            "mariadb+pymysql://u@127.0.0.1/db", {"client_flag": "12x45"}, "12x45", id="flag"
        ),
    ],
)
def test_a_bad_connect_args_entry_is_named_and_never_quoted(
    url: str, connect_args: dict[str, Any], secret: str
) -> None:
    """A numeric password (as a configuration file reads 123456) would fail on first use,
    on PyMySQL with a bare TypeError; a flag that is no number raised a bare ValueError
    that quoted it."""
    with pytest.raises(ConfigError) as info:
        SQLStore.from_url(url, connect_args=connect_args)
    message = str(info.value)
    assert "'connect_args'" in message and repr(next(iter(connect_args))) in message
    assert secret not in message


def test_a_driver_refusing_an_argument_is_a_store_error_that_quotes_nothing(
    tmp_path: Path,
) -> None:
    """The driver's TypeError used to escape the store as it was."""
    url = f"sqlite:///{tmp_path / 'x.db'}"
    with SQLStore.from_url(url, connect_args={"s3cr3t_option": 1}) as store:
        with pytest.raises(StoreError, match="'connect_args'") as info:
            store.ping()
    assert "s3cr3t" not in str(info.value)
    assert isinstance(info.value.__cause__, TypeError)


@pytest.mark.parametrize("sql_kind", SQL_SERVER_KINDS)
def test_a_custom_mysql_client_flag_keeps_found_rows(sql_kind: str, open_sql: OpenSQL) -> None:
    """A refresh that changes nothing must still count its row, or it looks gone."""
    options: dict[str, Any] = {}
    if sql_kind == "mariadb":
        options["connect_args"] = {"client_flag": 0}
    store = open_sql(**options)
    key = new_key()
    record = make_record(ttl=600)
    assert store.save(key, record, expected_version=None)
    assert store.refresh(key, record.expires_at, record.last_seen)
    assert store.refresh(key, record.expires_at - 60, record.last_seen - 60)
