"""The sealing primitives themselves: the key a session's records are sealed under, and
nonces that never repeat, across threads and across a fork (docs/security.rst).

GCM under one key must never see a nonce twice; nonces are drawn from the OS in batches,
so these tests check that no batch is ever handed out twice, in one process or two.
"""

from __future__ import annotations

import ctypes
import hmac
import os
import secrets
import sys
import threading
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from wsgisession import _sealing
from wsgisession._sealing import (
    APART_MAGIC,
    Apart,
    Opened,
    Sealer,
    binding_of,
    derive_key,
    open_header,
    seal_header,
)

_NONCE = 12
_SECRET = "the-application-s-secret-key-for-these-tests"
_SEALER = Sealer(_SECRET)
seal = _SEALER.seal
seal_apart = _SEALER.seal_apart


def open_sealed(
    session_id: str, key: str, version: int, user_id: str | None, meta: bytes, blob: bytes
) -> Opened:
    """What *blob* holds, opened by the sealer of these tests."""
    return _SEALER.open(session_id, key, version, user_id, meta, blob)[0]


@pytest.mark.parametrize(
    "session_id",
    [
        pytest.param(secrets.token_urlsafe(32), id="an-id"),
        pytest.param("", id="empty"),
        pytest.param("x" * 64, id="one-block"),
        pytest.param("y" * 65, id="longer-than-a-block"),
        pytest.param("é" * 40, id="not-ascii"),
    ],
)
def test_the_record_key_is_hmac_sha256_under_the_secret_key_of_the_label_and_id(
    session_id: str,
) -> None:
    """The KDF computes HMAC from states kept for the key, for speed; it must be HMAC
    exactly, so that records sealed before stay readable."""
    binding = binding_of(_SECRET)
    assert binding == hmac.digest(_SECRET.encode(), b"wsgisession record key binding v1", "sha256")
    expected = hmac.digest(binding, b"wsgisession record key v2\0" + session_id.encode(), "sha256")
    assert derive_key(session_id, binding) == expected
    # The one the sealer uses, with its states kept across ids.
    blob = _SEALER.seal(session_id, "k" * 64, 1, None, b"{}", b"", b"{}")
    cipher = AESGCM(expected)
    assert cipher.decrypt(blob[5:17], blob[17:], b"k" * 64 + b"\x001\x00\x00{}") == b"\0\0{}"


def _nonce_of(blob: bytes) -> bytes:
    return blob[len(_sealing.MAGIC) : len(_sealing.MAGIC) + _NONCE]


def _sealed_nonces(count: int, session_id: str = "s" * 43) -> list[bytes]:
    return [
        _nonce_of(seal(session_id, "k" * 64, 1, None, b"{}", b"", b"{}")) for _ in range(count)
    ]


def test_nonces_never_repeat_across_many_draws() -> None:
    nonces = _sealed_nonces(3 * _sealing._NONCES_PER_DRAW + 7)
    assert len(set(nonces)) == len(nonces)
    assert all(len(nonce) == _NONCE for nonce in nonces)


def test_nonces_never_repeat_across_threads() -> None:
    found: list[list[bytes]] = []
    start = threading.Barrier(8)

    def draw() -> None:
        start.wait()
        found.append([_sealing._nonces.take() for _ in range(2000)])

    threads = [threading.Thread(target=draw) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [nonce for batch in found for nonce in batch]
    assert len(every) == 16000
    assert len(set(every)) == len(every)


def test_a_sealed_record_still_opens_with_its_own_binding_only() -> None:
    session_id = secrets.token_urlsafe(32)
    blob = seal(session_id, "k" * 64, 3, "ann", b"{}", b"hdr", b"payload")
    assert open_sealed(session_id, "k" * 64, 3, "ann", b"{}", blob) == (b"hdr", b"payload", None)
    for other in [
        (secrets.token_urlsafe(32), "k" * 64, 3, "ann", b"{}"),
        (session_id, "j" * 64, 3, "ann", b"{}"),
        (session_id, "k" * 64, 4, "ann", b"{}"),
        (session_id, "k" * 64, 3, "bob", b"{}"),
        (session_id, "k" * 64, 3, "ann", b"{ }"),
    ]:
        with pytest.raises(ValueError, match="does not authenticate"):
            open_sealed(*other, blob)


def test_a_blob_that_is_not_sealed_does_not_open() -> None:
    with pytest.raises(ValueError):
        open_sealed("s" * 43, "k" * 64, 1, None, b"{}", b'{"user": "forged"}' * 4)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_never_hands_out_its_parents_unused_nonces() -> None:
    """The parent's pool, copied into the child by fork, must not be used there: the
    child's nonces and the parent's next ones are disjoint."""
    _sealing._nonces.take()  # the parent now holds a pool with 255 unused nonces
    count = _sealing._NONCES_PER_DRAW
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child's side, reported through the pipe
        try:
            os.close(read)
            os.write(write, b"".join(_sealing._nonces.take() for _ in range(count)))
        finally:
            os._exit(0)
    os.close(write)
    received = b""
    while chunk := os.read(read, 1 << 16):
        received += chunk
    os.close(read)
    os.waitpid(pid, 0)
    child = {received[i : i + _NONCE] for i in range(0, len(received), _NONCE)}
    parent = {_sealing._nonces.take() for _ in range(count)}
    assert len(child) == count
    assert not child & parent


@pytest.mark.skipif(sys.platform != "linux", reason="forks through libc with ctypes")
def test_a_child_forked_by_c_code_that_runs_no_hook_still_draws_its_own_nonces() -> None:
    """A fork made without PyOS_AfterFork_Child() (uWSGI's, by default) runs no
    at-fork hook: the child must still not hand out its parent's unused nonces."""
    _sealing._nonces.take()
    read, write = os.pipe()
    pid = ctypes.CDLL(None).fork()
    if pid == 0:  # pragma: no cover - the child's side, reported through the pipe
        try:
            os.write(write, _sealing._nonces.take())
        finally:
            os._exit(0)
    os.close(write)
    child = os.read(read, _NONCE)
    os.close(read)
    os.waitpid(pid, 0)
    assert len(child) == _NONCE
    assert child not in {_sealing._nonces.take() for _ in range(_sealing._NONCES_PER_DRAW)}


def test_a_record_claiming_the_empty_user_does_not_open() -> None:
    # No user and "" would bind alike; a user id is never empty, so "" was set by hand.
    blob = seal("s" * 43, "k" * 64, 1, None, b"{}", b"", b"{}")
    with pytest.raises(ValueError, match="never empty"):
        open_sealed("s" * 43, "k" * 64, 1, "", b"{}", blob)


# -- values sealed apart --------------------------------------------------------------------

_KEY = "k" * 64
_BINDING = (_KEY, 3, "ann", b"{}")


def _sealed_with_values_apart(session_id: str) -> tuple[bytes, bytes, bytes]:
    """A record of ``{"a":<big>,"b":1,"c":<big>}`` with both big values sealed apart."""
    first, second = b'"' + b"x" * 300 + b'"', b"[" + b"7," * 200 + b"7]"
    rest = b' {"a":,"b":1,"c":}'
    apart = [
        Apart("a", rest.index(b","), seal_apart(session_id, _KEY, first)),
        Apart("c", rest.index(b"}"), seal_apart(session_id, _KEY, second)),
    ]
    blob = seal(session_id, *_BINDING, b"hdr", rest, apart)
    return blob, first, second


def test_values_sealed_apart_open_back_in_their_places() -> None:
    session_id = secrets.token_urlsafe(32)
    blob, first, second = _sealed_with_values_apart(session_id)
    assert blob.startswith(APART_MAGIC)
    header, payload, apart = open_sealed(session_id, *_BINDING, blob)
    assert header == b"hdr"
    assert payload == b' {"a":' + first + b',"b":1,"c":' + second + b"}"
    assert apart is not None and set(apart.seals) == {"a", "c"}
    assert bytes(apart.seals["a"]) in blob and bytes(apart.seals["c"]) in blob
    assert apart.texts == {"a": first, "c": second}
    assert b"0".join(apart.around) == b' {"a":0,"b":1,"c":0}'


def test_a_record_with_values_apart_opens_with_its_own_binding_only() -> None:
    session_id = secrets.token_urlsafe(32)
    blob, _, _ = _sealed_with_values_apart(session_id)
    for other in [
        (secrets.token_urlsafe(32), *_BINDING),
        (session_id, "j" * 64, 3, "ann", b"{}"),
        (session_id, _KEY, 4, "ann", b"{}"),
        (session_id, _KEY, 3, "bob", b"{}"),
        (session_id, _KEY, 3, "ann", b"{ }"),
    ]:
        with pytest.raises(ValueError, match="does not authenticate"):
            open_sealed(*other, blob)


def test_a_value_sealed_apart_for_another_key_does_not_open() -> None:
    session_id = secrets.token_urlsafe(32)
    elsewhere = seal_apart(session_id, "j" * 64, b"[1]")
    blob = seal(session_id, *_BINDING, b"", b" {}", [Apart("a", 2, elsewhere)])
    with pytest.raises(ValueError, match="does not authenticate"):
        open_sealed(session_id, *_BINDING, blob)


def test_an_older_seal_of_the_same_value_swapped_in_reads_as_not_the_records() -> None:
    session_id = secrets.token_urlsafe(32)
    blob, first, _ = _sealed_with_values_apart(session_id)
    _, _, apart = open_sealed(session_id, *_BINDING, blob)
    older = seal_apart(session_id, _KEY, first)  # same text, same key: valid on its own
    assert apart is not None
    swapped = blob.replace(bytes(apart.seals["a"]), older)
    with pytest.raises(ValueError, match="not the record's"):
        open_sealed(session_id, *_BINDING, swapped)


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda blob: blob[:-1], id="truncated"),
        pytest.param(lambda blob: blob + b"\0", id="trailing-bytes"),
        pytest.param(lambda blob: blob[:30], id="cut-inside-the-main-seal"),
        pytest.param(lambda blob: blob[:-20] + bytes([blob[-20] ^ 1]) + blob[-19:], id="flip"),
    ],
)
def test_a_damaged_record_with_values_apart_does_not_open(damage: Any) -> None:
    session_id = secrets.token_urlsafe(32)
    blob, _, _ = _sealed_with_values_apart(session_id)
    with pytest.raises(ValueError):
        open_sealed(session_id, *_BINDING, damage(blob))


def test_a_seal_moved_from_one_layout_to_the_other_does_not_open() -> None:
    """The main seal binds its layout: the ciphertext of a record without values apart,
    framed as one with (no values, a length in front), fails to open, and the reverse."""
    session_id = secrets.token_urlsafe(32)
    plain = seal(session_id, *_BINDING, b"", b"\0\0 {}")
    body = plain[len(APART_MAGIC) + _NONCE :]
    framed = APART_MAGIC + plain[len(APART_MAGIC) : len(APART_MAGIC) + _NONCE]
    framed += len(body).to_bytes(4, "big") + body
    with pytest.raises(ValueError, match="does not authenticate"):
        open_sealed(session_id, *_BINDING, framed)
    apart, _, _ = _sealed_with_values_apart(session_id)
    with pytest.raises(ValueError, match="does not authenticate"):
        open_sealed(session_id, *_BINDING, _sealing.MAGIC + apart[len(APART_MAGIC) :])


@pytest.mark.parametrize("name", ["plain", "\xe9t\xe9 \u2603", "lone \udc80 surrogate"])
def test_the_sealed_header_keeps_any_key_name_and_the_bound_address(name: str) -> None:
    # A key name is any str, a lone surrogate included, which UTF-8 can't encode.
    header = seal_header("203.0.113.9", [name, "other"])
    assert open_header(header, [10.5, 20.0]) == ("203.0.113.9", {name: 10.5, "other": 20.0})
    assert seal_header(None, []) == b"" and open_header(b"", []) == (None, {})
