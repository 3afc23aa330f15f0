"""Encryption at rest: a stolen store reveals no session data, and can't inject any.

The behaviour is in docs/behaviour.rst, section "Encryption at rest", and what an
attacker can and can't do in docs/security.rst. Every test that reads or rewrites
records goes through a real store, and dumps what it holds as a thief would.
"""

from __future__ import annotations

import logging
import pickle
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import pytest
from werkzeug.test import Client
from werkzeug.wrappers import Request

from tests.helpers import (
    SECRET,
    body,
    key_of,
    make_client,
    raw_dump,
    session_id_of,
    twin,
)
from wsgisession import ConfigError, Session, SessionError, SessionMiddleware
from wsgisession._sealing import Opened, Sealer, is_sealed
from wsgisession._snapshot import PLAIN_META
from wsgisession.config import Config
from wsgisession.stores import Record, Store
from wsgisession.stores.memory import MemoryStore

#: What a thief would look for: a value, and a key name, that only the data holds.
SECRET_VALUE = "tok-5f1e-card-4111111111111111"
SECRET_NAME = "oauth_refresh_token_of_ann"


def _put_secret(session: Session, request: Request) -> str:
    session[SECRET_NAME] = SECRET_VALUE
    session["n"] = session.get("n", 0) + 1
    return "ok"


def _peek(session: Session, request: Request) -> Any:
    return {"data": dict(session), "expired": session.expired}


def _login(session: Session, request: Request) -> str:
    session.regenerate()
    session.user_id = "ann"
    session["user"] = "ann"
    return "ok"


ROUTES = {"/put": _put_secret, "/peek": _peek, "/login": _login}


def _client(store: Store, **options: Any) -> tuple[Client, SessionMiddleware]:
    return make_client(ROUTES, store=store, **options)


def _rewrite(store: Store, key: str, change: Any) -> None:
    """Overwrite the record under *key* with ``change(record)``, as a store writer can."""
    record = store.load(key)
    assert record is not None
    assert store.save(key, change(record), expected_version=record.version)


def _reads_as_corrupt(client: Client, middleware: SessionMiddleware) -> bool:
    before = middleware.metrics()["corrupt"]
    answer = body(client.get("/peek"))
    return (
        answer == {"data": {}, "expired": True} and middleware.metrics()["corrupt"] == before + 1
    )


# -- nothing readable ---------------------------------------------------------------------------


def test_no_session_data_is_readable_in_a_dump_of_the_store(store: Store, tmp_path: Path) -> None:
    client, _ = _client(store, bind_ip=True)
    client.get("/put", environ_base={"REMOTE_ADDR": "203.0.113.77"})
    dump = raw_dump(store, tmp_path)
    assert dump, "the dump found nothing at all: it is not looking where the store writes"
    assert SECRET_VALUE.encode() not in dump
    assert SECRET_NAME.encode() not in dump
    assert b"203.0.113.77" not in dump  # the bound address is sealed too
    record = store.load(key_of(client))
    assert record is not None and is_sealed(record.data)


def test_names_of_keys_with_a_timeout_are_sealed_and_still_expire(
    store: Store, tmp_path: Path, clock: Any
) -> None:
    def short(session: Session, request: Request) -> str:
        session.set(SECRET_NAME, SECRET_VALUE, timeout=30)
        session.set("other_short_lived_key", 1, timeout=90)
        return "ok"

    client, _ = make_client({**ROUTES, "/short": short}, store=store)
    client.get("/short")
    dump = raw_dump(store, tmp_path)
    assert SECRET_NAME.encode() not in dump
    assert b"other_short_lived_key" not in dump
    assert body(client.get("/peek"))["data"] == {
        SECRET_NAME: SECRET_VALUE,
        "other_short_lived_key": 1,
    }
    clock.advance(60)
    assert body(client.get("/peek"))["data"] == {"other_short_lived_key": 1}


def test_with_encrypt_false_the_same_dump_shows_the_data(store: Store, tmp_path: Path) -> None:
    """The control of the test above: the dump does find data written unsealed."""
    client, _ = _client(store, encrypt=False)
    client.get("/put")
    dump = raw_dump(store, tmp_path)
    assert SECRET_VALUE.encode() in dump
    assert SECRET_NAME.encode() in dump


def test_what_stays_readable_is_what_listings_need(store: Store) -> None:
    client, middleware = _client(store, track_clients=True)
    client.get(
        "/login", environ_base={"REMOTE_ADDR": "198.51.100.5"}, headers={"User-Agent": "UA/1"}
    )
    record = store.load(key_of(client))
    assert record is not None and record.user_id == "ann"
    assert b"UA/1" in record.meta and b"198.51.100.5" in record.meta
    [info] = middleware.user_sessions("ann")
    assert (info.user_agent, info.remote_addr) == ("UA/1", "198.51.100.5")
    assert middleware.end_user_sessions("ann") == 1
    assert body(client.get("/peek"))["data"] == {}


# -- big values sealed apart --------------------------------------------------------------------

#: A value big enough to be sealed apart from the rest of the record.
BIG_VALUE = [{"sku": f"SKU-{i:05d}", "note": SECRET_VALUE} for i in range(600)]


def _put_big(session: Session, request: Request) -> str:
    session["cart"] = BIG_VALUE
    session["n"] = session.get("n", 0) + 1
    return "ok"


def _count(session: Session, request: Request) -> str:
    session["n"] = session.get("n", 0) + 1
    return "ok"


def _grow(session: Session, request: Request) -> str:
    session["cart"].append({"sku": "SKU-new"})
    return "ok"


def _big_client(store: Store) -> tuple[Client, SessionMiddleware]:
    routes = {**ROUTES, "/big": _put_big, "/count": _count, "/grow": _grow}
    return make_client(routes, store=store)


def open_sealed(
    session_id: str, key: str, version: int, user_id: str | None, meta: bytes, blob: bytes
) -> Opened:
    """What *blob* holds, opened as the middleware of these tests opens it."""
    return Sealer(SECRET).open(session_id, key, version, user_id, meta, blob)[0]


def _opened(client: Client, store: Store) -> Opened:
    """What the record of *client*'s session holds, opened with its own id."""
    record = store.load(key_of(client))
    assert record is not None
    return open_sealed(
        session_id_of(client),
        key_of(client),
        record.version,
        record.user_id,
        record.meta,
        record.data,
    )


def _seal_of(client: Client, store: Store, name: str) -> bytes:
    _, _, apart = _opened(client, store)
    assert apart is not None, "no value of the record was sealed apart"
    return bytes(apart.seals[name])


def _cart_sealed_apart(store: Store) -> tuple[Client, SessionMiddleware, bytes]:
    """A client whose session holds the big cart, sealed apart, and the cart's seal."""
    client, middleware = _big_client(store)
    client.get("/big")
    client.get("/count")  # the first save that can copy it seals it apart
    return client, middleware, _seal_of(client, store, "cart")


def test_a_big_value_unchanged_by_a_save_keeps_its_seal(store: Store, tmp_path: Path) -> None:
    client, middleware, sealed = _cart_sealed_apart(store)
    client.get("/count")
    assert _seal_of(client, store, "cart") == sealed
    assert body(client.get("/peek"))["data"] == {"cart": BIG_VALUE, "n": 3}
    dump = raw_dump(store, tmp_path)
    assert SECRET_VALUE.encode() not in dump and b"SKU-00001" not in dump
    assert middleware.metrics()["corrupt"] == 0


def test_a_big_value_changed_is_sealed_afresh(store: Store) -> None:
    client, _, sealed = _cart_sealed_apart(store)
    client.get("/grow")
    assert _seal_of(client, store, "cart") != sealed
    assert body(client.get("/peek"))["data"]["cart"] == [*BIG_VALUE, {"sku": "SKU-new"}]


def test_regenerate_seals_big_values_afresh_under_the_new_id(store: Store) -> None:
    client, _, sealed = _cart_sealed_apart(store)
    client.get("/login")
    record = store.load(key_of(client))
    assert record is not None and sealed not in record.data
    assert body(client.get("/peek"))["data"]["cart"] == BIG_VALUE


# -- nothing injectable -------------------------------------------------------------------------


def test_a_record_copied_under_another_sessions_key_reads_as_corrupt(store: Store) -> None:
    alice, middleware = _client(store)
    alice.get("/put")
    mallory = Client(middleware)
    mallory.get("/put")
    stolen = store.load(key_of(alice))
    assert stolen is not None
    _rewrite(store, key_of(mallory), lambda mine: replace(stolen, version=mine.version))
    assert _reads_as_corrupt(mallory, middleware)
    assert body(alice.get("/peek"))["data"][SECRET_NAME] == SECRET_VALUE


def test_a_flipped_bit_reads_as_corrupt(store: Store) -> None:
    client, middleware = _client(store)
    client.get("/put")

    def flip(record: Record) -> Record:
        data = bytearray(record.data)
        data[-5] ^= 0x01
        return replace(record, data=bytes(data))

    _rewrite(store, key_of(client), flip)
    assert _reads_as_corrupt(client, middleware)


def test_older_data_under_a_newer_version_reads_as_corrupt(store: Store) -> None:
    client, middleware = _client(store)
    client.get("/put")
    older = store.load(key_of(client))
    client.get("/put")
    assert older is not None
    _rewrite(store, key_of(client), lambda now: replace(now, data=older.data))
    assert _reads_as_corrupt(client, middleware)


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda r: replace(r, user_id="mallory"), id="user"),
        pytest.param(lambda r: replace(r, meta=b'{"v":1,"r":1}'), id="remember"),
    ],
)
def test_changed_metadata_reads_as_corrupt(store: Store, tamper: Any) -> None:
    client, middleware = _client(store)
    client.get("/login")
    _rewrite(store, key_of(client), tamper)
    assert _reads_as_corrupt(client, middleware)


def test_an_anonymous_record_given_the_empty_user_reads_as_corrupt(store: Store) -> None:
    # No user and "" bind alike in the seal; an empty user id is refused instead.
    client, middleware = _client(store)
    client.get("/put")
    _rewrite(store, key_of(client), lambda r: replace(r, user_id=""))
    assert _reads_as_corrupt(client, middleware)


def _timed_keys(session: Session, request: Request) -> str:
    for i in range(int(request.args["n"])):
        session.set(f"a-key-with-a-timeout-and-a-long-name-{i:05d}", i, timeout=600)
    return "ok"


@pytest.mark.parametrize("encrypt", [True, False], ids=["sealed", "unsealed"])
def test_key_timeouts_too_many_to_seal_their_names_are_a_clear_error(encrypt: bool) -> None:
    # Their names are sealed in a header of at most 64 KB; unsealed, the meta has room.
    client, _ = make_client({**ROUTES, "/timed": _timed_keys}, encrypt=encrypt)
    assert client.get("/timed?n=100").status_code == 200
    if encrypt:
        with pytest.raises(SessionError, match=r"2500 keys with a timeout take \d+ bytes"):
            client.get("/timed?n=2500")
    else:
        assert client.get("/timed?n=2500").status_code == 200
    assert len(body(client.get("/peek"))["data"]) == (100 if encrypt else 2500)


def _long_name(session: Session, request: Request) -> str:
    session["N" * 70_000] = "v" * 20_000  # a value sealed apart, under a key too long to name
    session["n"] = session.get("n", 0) + 1
    return "ok"


def test_a_big_value_under_a_key_too_long_to_name_apart_is_sealed_with_the_rest() -> None:
    client, _ = make_client({**ROUTES, "/long": _long_name})
    for _ in range(3):  # the later saves reuse the stored record, where values are cut
        assert client.get("/long").status_code == 200
    assert body(client.get("/peek"))["data"]["n"] == 3


def _plant(store: Store, client: Client) -> None:
    payload = b'{"user": "admin", "n": 1}'
    _rewrite(store, key_of(client), lambda r: replace(r, data=payload, meta=PLAIN_META))


def test_a_plaintext_record_planted_in_the_store_is_refused(store: Store) -> None:
    client, middleware = _client(store)
    client.get("/put")
    _plant(store, client)
    assert _reads_as_corrupt(client, middleware)


class _Evil:
    """Runs code when unpickled: what a planted pickle record would do."""

    ran: ClassVar[list[bool]] = []

    def __reduce__(self) -> tuple[Any, ...]:
        return (_Evil.ran.append, (True,))


@pytest.mark.parametrize("serializer", ["json", "pickle"])
def test_a_visitor_with_store_access_cant_seal_a_record_for_their_own_session(
    store: Store, serializer: str
) -> None:
    # Sealed under a key from the raw id alone, which the visitor's own cookie holds,
    # a record they sealed themselves opened: any user id they chose, and with pickle,
    # their code run. The key takes secret_key too, which they don't have.
    client, middleware = _client(store, serializer=serializer)
    client.get("/put")
    payload = (
        pickle.dumps({"user": "admin", "evil": _Evil()})
        if serializer == "pickle"
        else b'{"user": "admin"}'
    )

    def forge(record: Record) -> Record:
        sealed = Sealer("a guess at the application's secret key, wrong").seal(
            session_id_of(client),
            key_of(client),
            record.version,
            "admin",
            record.meta,
            b"",
            payload,
        )
        return replace(record, data=sealed, user_id="admin")

    _Evil.ran.clear()
    _rewrite(store, key_of(client), forge)
    assert _reads_as_corrupt(client, middleware)
    assert _Evil.ran == []


def test_records_sealed_under_a_fallback_key_open_and_are_sealed_again(store: Store) -> None:
    # Rotating secret_key with the old one as a fallback logs nobody out; the first
    # use seals the record again, read-only or not, so the fallback can go after.
    old, _ = _client(store, secret_key="an-old-secret-key-for-the-rotation-test")
    old.get("/put")
    rotated = _same_store_other_options(
        old,
        store,
        secret_key=SECRET,
        secret_key_fallbacks=["an-old-secret-key-for-the-rotation-test"],
    )
    assert body(rotated.get("/peek"))["data"][SECRET_NAME] == SECRET_VALUE
    record = store.load(key_of(rotated))
    assert record is not None
    assert _opened(rotated, store)[1]  # opens under SECRET alone now
    after = _same_store_other_options(rotated, store, secret_key=SECRET)
    assert body(after.get("/peek"))["data"][SECRET_NAME] == SECRET_VALUE


def test_a_record_over_a_lowered_max_size_is_still_read_after_a_rotation(
    store: Store,
) -> None:
    # Sealing it again was forced on its first read, and the save, over max_size now,
    # failed every request, read-only ones included.
    old = "an-old-secret-key-for-the-rotation-test"
    client, _ = make_client({**ROUTES, "/big": _put_big}, store=store, secret_key=old)
    client.get("/put")
    client.get("/big")
    rotated = _same_store_other_options(
        client, store, secret_key=SECRET, secret_key_fallbacks=[old], max_size=4096
    )
    response = rotated.get("/peek")
    assert response.status_code == 200
    assert body(response)["data"][SECRET_NAME] == SECRET_VALUE


def test_records_sealed_under_a_key_no_longer_listed_read_as_corrupt(store: Store) -> None:
    old, _ = _client(store, secret_key="an-old-secret-key-for-the-rotation-test")
    old.get("/put")
    record = store.load(key_of(old))
    assert record is not None
    with pytest.raises(ValueError, match="does not authenticate"):
        Sealer(SECRET).open(
            session_id_of(old), key_of(old), record.version, None, record.meta, record.data
        )


@pytest.mark.parametrize("encrypt", ["migrate", False])
def test_unsealed_records_are_read_while_migrating_or_switched_off(
    store: Store, encrypt: bool | str
) -> None:
    client, middleware = _client(store, encrypt=encrypt)
    client.get("/put")
    _plant(store, client)
    assert body(client.get("/peek"))["data"] == {"user": "admin", "n": 1}


def test_a_seal_that_fails_is_logged_without_data_and_emitted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    events: list[Any] = []
    store = MemoryStore()
    client, middleware = _client(store, listeners=[events.append])
    client.get("/put")
    _rewrite(store, key_of(client), lambda r: replace(r, data=r.data[:-1]))
    with caplog.at_level(logging.WARNING, logger="wsgisession"):
        assert _reads_as_corrupt(client, middleware)
    assert "does not authenticate" in caplog.text
    assert SECRET_VALUE not in caplog.text
    assert [e.name for e in events].count("corrupt") == 1


# -- switching on and off -----------------------------------------------------------------------


def _same_store_other_options(client: Client, store: Store, **options: Any) -> Client:
    """The same browser, talking to a new deployment of the app with *options*."""
    other, _ = _client(store, **options)
    cookie = client.get_cookie("session_id")
    assert cookie is not None
    other.set_cookie("session_id", cookie.value)
    return other


def test_switching_on_through_migrate_logs_nobody_out(store: Store, tmp_path: Path) -> None:
    plain, _ = _client(store, encrypt=False)
    plain.get("/put")
    assert SECRET_VALUE.encode() in raw_dump(store, tmp_path)
    migrating = _same_store_other_options(plain, store, encrypt="migrate")
    assert body(migrating.get("/peek"))["data"][SECRET_NAME] == SECRET_VALUE
    migrating.get("/put")  # the next save seals it
    record = store.load(key_of(migrating))
    assert record is not None and is_sealed(record.data)
    sealed = _same_store_other_options(migrating, store, encrypt=True)
    assert body(sealed.get("/peek"))["data"] == {SECRET_NAME: SECRET_VALUE, "n": 2}


def test_switching_off_logs_nobody_out(store: Store) -> None:
    sealed, _ = _client(store)
    sealed.get("/put")
    plain = _same_store_other_options(sealed, store, encrypt=False)
    assert body(plain.get("/peek"))["data"][SECRET_NAME] == SECRET_VALUE
    plain.get("/put")
    record = store.load(key_of(plain))
    assert record is not None and not is_sealed(record.data)


def test_a_session_read_only_while_migrating_stays_unsealed_until_written(
    store: Store,
) -> None:
    """Switching back to True before remember_me_timeout passed logs out whoever was
    never written in between, which is why the docs say to wait that long."""
    plain, _ = _client(store, encrypt=False)
    plain.get("/put")
    migrating = _same_store_other_options(plain, store, encrypt="migrate")
    migrating.get("/peek")
    record = store.load(key_of(migrating))
    assert record is not None and not is_sealed(record.data)


# -- the id that opens a record ------------------------------------------------------------------


def test_regenerate_seals_the_record_again_under_the_new_id(store: Store) -> None:
    client, middleware = _client(store)
    client.get("/put")
    old_id = session_id_of(client)
    client.get("/login")
    new_id, new_key = session_id_of(client), key_of(client)
    assert new_id != old_id
    record = store.load(new_key)
    assert record is not None
    with pytest.raises(ValueError, match="does not authenticate"):
        open_sealed(old_id, new_key, record.version, record.user_id, record.meta, record.data)
    payload = open_sealed(
        new_id, new_key, record.version, record.user_id, record.meta, record.data
    )[1]
    assert SECRET_VALUE.encode() in payload
    assert body(client.get("/peek"))["data"][SECRET_NAME] == SECRET_VALUE


def test_a_merge_after_a_conflict_opens_the_stored_record(store: Store) -> None:
    tabs: dict[str, Client] = {}

    def slow(session: Session, request: Request) -> str:
        session.get("n")
        tabs["other"].get("/put")
        session["slow"] = 1
        return "ok"

    client, middleware = make_client({**ROUTES, "/slow": slow}, store=store)
    client.get("/put")
    tabs["other"] = twin(client)
    client.get("/slow")
    assert body(client.get("/peek"))["data"] == {SECRET_NAME: SECRET_VALUE, "n": 2, "slow": 1}
    assert middleware.metrics()["corrupt"] == 0


# -- pickle ----------------------------------------------------------------------------------


def test_sealed_pickle_records_carry_no_signature_of_their_own() -> None:
    store = MemoryStore()
    client, _ = _client(store, serializer="pickle")
    client.get("/put")
    payload = _opened(client, store)[1]
    assert pickle.loads(payload)[SECRET_NAME] == SECRET_VALUE
    assert body(client.get("/peek"))["data"][SECRET_NAME] == SECRET_VALUE


def test_unsealed_pickle_records_stay_signed() -> None:
    store = MemoryStore()
    client, middleware = _client(store, serializer="pickle", encrypt=False)
    client.get("/put")
    record = store.load(key_of(client))
    assert record is not None and record.data[:1] != b"\x80"  # the HMAC tag comes first
    _rewrite(store, key_of(client), lambda r: replace(r, data=r.data[32:]))
    assert _reads_as_corrupt(client, middleware)


# -- the option -------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [True, False, "migrate"])
def test_encrypt_takes_true_false_or_migrate(value: bool | str) -> None:
    assert Config.from_options(secret_key=SECRET, encrypt=value).encrypt == value


@pytest.mark.parametrize("value", ["yes", 1, None, "Migrate!"])
def test_encrypt_refuses_anything_else(value: object) -> None:
    with pytest.raises(ConfigError, match="option 'encrypt' must be True, False or 'migrate'"):
        Config.from_options(secret_key=SECRET, encrypt=value)


@pytest.mark.parametrize(
    ("text", "value"),
    [("true", True), ("off", False), ("migrate", "migrate"), ("MIGRATE", "migrate")],
)
def test_encrypt_in_an_ini_file(tmp_path: Path, text: str, value: bool | str) -> None:
    path = tmp_path / "app.ini"
    path.write_text(f"[session]\nsecret_key = {SECRET}\nencrypt = {text}\n")
    assert Config.from_ini(path).encrypt == value


def test_encrypt_from_the_environment() -> None:
    environ = {"WSGISESSION_SECRET_KEY": SECRET, "WSGISESSION_ENCRYPT": "migrate"}
    assert Config.from_env(environ=environ).encrypt == "migrate"
