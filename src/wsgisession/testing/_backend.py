"""Tests of what a store promises about its backend and its options.

A store is built without contacting its backend; once the backend can't be reached,
every operation raises :exc:`~wsgisession.StoreError` chained to the backend's
exception, and nothing else; an option the store does not take is a
:exc:`~wsgisession.ConfigError` naming it. These tests need a fixture besides
``store`` that only the store's author can write. Without it they are skipped, and the
reason names the fixture to provide.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Final

import pytest

from ..errors import ConfigError, StoreError
from ..stores.base import Record, Store
from ._helpers import make_record, make_tombstone, new_key, provided

__all__ = ["BackendTests"]

# What an operation may answer without its backend, by design: a store with native
# expiry purges nothing, one that can't count says so, and the base claim_purge (a store
# of one process) needs nobody's agreement. Anything else must raise StoreError.
_NO_ANSWER: Final = object()


class BackendTests:
    """Tests of what a store promises about its backend and its options.

    Part of :class:`~wsgisession.testing.StoreConformance`. Each needs, besides
    ``store``, a fixture of the test module (or a ``conftest.py``):

    ``unreachable_store``
        A callable without arguments that builds the store under test pointed at a
        backend that isn't there: a loopback port nobody listens on, a path where a file
        stands in the way of a directory. Nothing may be done to make it fail that a
        real outage would not do.
    ``store_factory``
        A callable that builds the store under test from its URL with the store options
        it is given, such as ``functools.partial(MyStore.from_url, url)``.
    """

    def test_an_unreachable_backend_fails_every_operation_with_store_error(
        self, store: Store, request: pytest.FixtureRequest
    ) -> None:
        """Building contacts nothing; then each operation raises StoreError, chained.

        The middleware relies on it: an application starts while its store is down, and
        a request that needs the store meanwhile fails with StoreError, which
        ``on_save_error`` and the error handlers expect, never the driver's own exception.
        """
        build: Callable[[], Store] = provided(
            request,
            "unreachable_store",
            "building the store contacts nothing and that every operation on a backend "
            "that isn't there raises StoreError chained to the backend's exception",
        )
        try:
            dead = build()
        except Exception as exc:
            pytest.fail(
                f"building the store with its backend unreachable raised {type(exc).__name__}: "
                f"{exc}; building must not contact the backend"
            )
        wrong = [
            problem
            for name, operation, answer in _operations(dead, store)
            if (problem := _misbehaviour(name, operation, answer)) is not None
        ]
        try:
            dead.close()
        except Exception as exc:  # reported with the rest, not instead of it
            wrong.append(f"close() raised {type(exc).__name__}: {exc}")
        assert not wrong, "with the backend unreachable:\n- " + "\n- ".join(wrong)

    def test_an_option_the_store_does_not_take_is_a_config_error(
        self, store: Store, request: pytest.FixtureRequest
    ) -> None:
        """An entry point's store is built by its own ``from_url``: only it can refuse."""
        factory: Callable[..., Store] = provided(
            request,
            "store_factory",
            "the store refuses an option it does not take with a ConfigError naming it",
        )
        with factory() as built:
            assert isinstance(built, type(store)), (
                f"the store_factory fixture built a {type(built).__name__}, but the store "
                f"fixture yields a {type(store).__name__}: they must build the same store"
            )
        try:
            accepted = factory(no_such_option=1)
        except ConfigError as exc:
            assert "no_such_option" in str(exc), (
                f"the ConfigError for an option the store does not take does not name it: {exc}"
            )
            return
        except Exception as exc:
            pytest.fail(
                f"building the store with an option it does not take (no_such_option=1) "
                f"raised {type(exc).__name__}: {exc}, not ConfigError"
            )
        accepted.close()
        pytest.fail(
            "building the store with an option it does not take (no_such_option=1) "
            "succeeded: raise ConfigError naming the option"
        )


def _operations(dead: Store, working: Store) -> list[tuple[str, Callable[[], Any], object]]:
    """Every operation of the store *dead*, and what it may answer without its backend."""
    key, record = new_key(), make_record(user_id="ann")
    now = time.time()

    def build(current: Record) -> Record:
        raise AssertionError("save_locked() called build without reading the backend")

    can_not_count = working.count() is None
    return [
        ("load()", lambda: dead.load(key), _NO_ANSWER),
        ("save() creating", lambda: dead.save(key, record, expected_version=None), _NO_ANSWER),
        (
            "save() comparing versions",
            lambda: dead.save(key, make_record(version=2), expected_version=1),
            _NO_ANSWER,
        ),
        (
            "save() replacing another key",
            lambda: dead.save(
                new_key(),
                record,
                expected_version=None,
                replaces=key,
                replaces_version=1,
                tombstone=make_tombstone(),
            ),
            _NO_ANSWER,
        ),
        ("save_locked()", lambda: dead.save_locked(key, build, timeout=5), _NO_ANSWER),
        ("refresh()", lambda: dead.refresh(key, now + 60, now), _NO_ANSWER),
        ("delete()", lambda: dead.delete(key), _NO_ANSWER),
        ("ping()", dead.ping, _NO_ANSWER),
        ("cleanup()", dead.cleanup, 0 if dead.native_expiry else _NO_ANSWER),
        ("user_records()", lambda: dead.user_records("ann"), _NO_ANSWER),
        ("count()", dead.count, None if can_not_count else _NO_ANSWER),
        (
            "claim_purge()",
            lambda: dead.claim_purge(60),
            True if type(dead).claim_purge is Store.claim_purge else _NO_ANSWER,
        ),
    ]


def _misbehaviour(name: str, operation: Callable[[], Any], answer: object) -> str | None:
    """What *operation* did wrong on a dead backend, or ``None`` if nothing."""
    try:
        result = operation()
    except StoreError as exc:
        if exc.__cause__ is None:
            return (
                f"{name} raised StoreError ({exc}) without the backend's exception as its "
                "cause: raise it from the driver's (translate_errors does)"
            )
        return None
    except Exception as exc:
        return f"{name} raised {type(exc).__name__}: {exc}, not StoreError"
    if answer is not _NO_ANSWER and result == answer:
        return None
    return f"{name} returned {result!r} instead of raising StoreError"
