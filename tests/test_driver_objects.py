"""A ready SQLAlchemy Engine or redis client can be passed as ``store``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pymemcache
import pytest
import redis
import sqlalchemy

from tests.helpers import SERVER, body, counter, make_client, server_url, unreachable
from wsgisession import ConfigError
from wsgisession.stores.redis import RedisStore
from wsgisession.stores.sql import SQLStore


def test_engine_becomes_a_sql_store(tmp_path: Path) -> None:
    engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    try:
        client, middleware = make_client(
            {"/inc": counter}, store=engine, store_options={"table_name": "web_sessions"}
        )
        assert isinstance(middleware.store, SQLStore)
        assert [body(client.get("/inc")) for _ in range(2)] == [1, 2]
        assert sqlalchemy.inspect(engine).has_table("web_sessions")
    finally:
        engine.dispose()


@SERVER
def test_redis_client_becomes_a_redis_store() -> None:
    url = server_url("redis")
    connection = redis.Redis.from_url(url)
    try:
        try:
            connection.ping()
        except redis.RedisError as exc:
            unreachable(url, exc)
        client, middleware = make_client(
            {"/inc": counter}, store=connection, store_options={"key_prefix": "drv-test:"}
        )
        assert isinstance(middleware.store, RedisStore)
        assert [body(client.get("/inc")) for _ in range(2)] == [1, 2]
        assert connection.keys("drv-test:*")
    finally:
        for key in connection.scan_iter(match="drv-test:*"):
            connection.delete(key)
        connection.close()


@pytest.mark.parametrize("value", [42, object(), ["memory://"]])
def test_other_objects_are_refused_at_construction(value: object) -> None:
    with pytest.raises(ConfigError, match="option 'store'"):
        make_client({}, store=value)


@pytest.mark.parametrize(
    ("build", "option", "takes"),
    [
        pytest.param(
            lambda: sqlalchemy.create_engine("sqlite://"),
            {"pool_size": 3},
            "table_name, cleanup_batch",
            id="engine",
        ),
        pytest.param(lambda: redis.Redis(), {"socket_timeout": 1}, "key_prefix", id="redis"),
        pytest.param(
            lambda: pymemcache.Client(("127.0.0.1", 11211)),
            {"timeout": 1},
            "key_prefix, name",
            id="pymemcache",
        ),
    ],
)
def test_a_connection_option_beside_a_ready_client_is_a_config_error(
    build: Any, option: dict[str, Any], takes: str
) -> None:
    # Passed on to the store's constructor, it raised a bare TypeError.
    client = build()
    (name,) = option
    with pytest.raises(
        ConfigError, match=rf"store option '{name}' can't apply to a ready .*{takes}$"
    ):
        make_client({}, store=client, store_options=option)
