"""The app ``load.py`` serves: one Flask app shape, with each library as its session layer.

Every library runs the same three routes, written once here: the demo's counter page
``/`` (its template, its count), ``/put?k=&v=`` (set one key, answer the session as
JSON) and ``/get`` (answer it unchanged). Only the session layer differs:

- ``wsgisession``: the demo itself, ``examples/flask_app.py``'s ``create_app``, its
  ``/`` included, with the two routes added;
- ``beaker``: Beaker's ``SessionMiddleware`` around Flask's ``wsgi_app``, the handlers
  using ``environ["beaker.session"]`` and ``.save()``;
- ``flask-session``: ``flask_session.Session(app)``, the handlers using
  ``flask.session``.

Each is configured as ``_contenders.py`` configures it for ``bench.py`` (the same
backends, the same defaults, the same idle timeout), so that the two benchmarks compare
like with like. Keys starting with ``_`` are left out of the JSON answers: Beaker keeps
its access and creation times in the session, Flask-Session its ``_permanent`` flag,
and neither is a key the client wrote.

The server process reads what to build from the environment: ``LOAD_LIBRARY``,
``LOAD_STORE`` (the store's kind), ``LOAD_URL`` (a database, Redis or memcached URL,
or the file store's directory), ``LOAD_NAMESPACE`` (the table name or key prefix of the
run) and
``LOAD_SECRET_KEY``.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from collections.abc import Callable, MutableMapping
from pathlib import Path
from types import ModuleType
from typing import Any

from _scenarios import TIMEOUT

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

LIBRARIES = ("wsgisession", "beaker", "flask-session")
#: The stores a library has no backend for here: Beaker's memcached backends need a
#: driver other than pymemcache.
NOT_SERVED = {"beaker": frozenset({"memcached"})}

#: The session cookie each library sets.
COOKIES = {"wsgisession": "session_id", "beaker": "beaker.session.id", "flask-session": "session"}

SessionOf = Callable[[], MutableMapping[str, Any]]
Save = Callable[[MutableMapping[str, Any]], None]


def server_app() -> Any:
    """Build the app for the server process, from the ``LOAD_*`` environment.

    Called by waitress (``--call _load_apps:server_app``) and gunicorn
    (``_load_apps:server_app()``).
    """
    return build(
        os.environ["LOAD_LIBRARY"],
        os.environ["LOAD_STORE"],
        os.environ["LOAD_URL"],
        os.environ["LOAD_NAMESPACE"],
        os.environ["LOAD_SECRET_KEY"],
    )


def prepare() -> None:
    """Build the app once and make one request, so that its table exists.

    Run in a process of its own before the server starts: gunicorn's workers build
    their apps at the same moment, and the libraries that create their table then race
    each other to do it, which is a start-up artefact, not a load result.
    """
    app = server_app()
    with app.test_client() as client:
        response = client.get("/get")
        if response.status_code != 200:
            raise RuntimeError(f"preparing the store: HTTP {response.status_code}")


def build(library: str, store: str, url: str, namespace: str, secret_key: str) -> Any:
    """The app of *library* on a store of kind *store* at *url*, in *namespace*."""
    example = _example()
    if library == "wsgisession":
        return _wsgisession(example, store, url, namespace, secret_key)
    if library == "beaker":
        return _beaker(example, store, url, namespace, secret_key)
    if library == "flask-session":
        return _flask_session(example, store, url, namespace, secret_key)
    raise ValueError(f"unknown library {library!r}; known: {', '.join(LIBRARIES)}")


def _example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("flask_app", ROOT / "examples" / "flask_app.py")
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    return example


def _no_save(session: MutableMapping[str, Any]) -> None:
    """Beaker alone needs telling that a session changed."""


def add_routes(app: Any, session_of: SessionOf, save: Save) -> None:
    """Add ``/put``, ``/get`` and ``/health`` to *app*, on the session *session_of* gives."""
    from flask import jsonify, request

    def answer(session: MutableMapping[str, Any]) -> Any:
        own = {k: v for k, v in session.items() if not k.startswith("_")}
        return jsonify(session=own, pid=os.getpid())

    def put() -> Any:
        session = session_of()
        session[request.args["k"]] = request.args["v"]
        save(session)
        return answer(session)

    def get() -> Any:
        return answer(session_of())

    app.add_url_rule("/put", "put", put)
    app.add_url_rule("/get", "get", get)
    app.add_url_rule("/health", "health", lambda: "ok")


def _peer_app(example: ModuleType, session_of: SessionOf, save: Save) -> Any:
    """A Flask app with the demo's counter page and the load routes, for a peer."""
    from flask import Flask, render_template_string

    app = Flask("load_peer")

    @app.get("/")
    def index() -> str:
        # The demo's index, line for line; a peer has no "remember me" to show.
        s = session_of()
        s["count"] = s.get("count", 0) + 1
        save(s)
        return render_template_string(
            example.PAGE,
            count=s["count"],
            user=s.get("user"),
            remembered=False,
            flash=s.get("flash"),
        )

    # The template links to the demo's login, logout and sessions pages, which the load
    # never visits; a peer has them only so that the links resolve.
    for endpoint in ("login", "logout", "sessions"):
        app.add_url_rule(f"/{endpoint}", endpoint, _not_here, methods=["GET", "POST"])
    add_routes(app, session_of, save)
    return app


def _not_here() -> tuple[str, int]:
    return "not part of the load", 404


def _wsgisession(example: ModuleType, store: str, url: str, namespace: str, key: str) -> Any:
    from flask import request

    from wsgisession import get_session

    if store == "file":
        options: dict[str, Any] = {"store": f"file:{Path(url) / 'wsgisession'}"}
    elif store in ("redis", "memcached"):
        options = {"store": url, "store_options": {"key_prefix": namespace}}
    else:
        options = {"store": url, "store_options": {"table_name": namespace}}
    # As bench.py's contender: the same idle timeout as the peers, and no purge thread
    # competing for the CPU (neither peer runs one).
    app = example.create_app(secret_key=key, timeout=TIMEOUT, cleanup_interval=0, **options)
    add_routes(app, lambda: get_session(request.environ), _no_save)
    return app


def _beaker(example: ModuleType, store: str, url: str, namespace: str, key: str) -> Any:
    from beaker.middleware import SessionMiddleware
    from flask import request

    def session_of() -> MutableMapping[str, Any]:
        session: MutableMapping[str, Any] = request.environ["beaker.session"]
        return session

    def save(session: MutableMapping[str, Any]) -> None:
        session.save()  # type: ignore[attr-defined]

    options: dict[str, Any] = {
        "key": COOKIES["beaker"],
        "secret": key,
        "timeout": TIMEOUT,
        "httponly": True,
        "samesite": "Lax",
    }
    if store == "file":
        options.update(type="file", data_dir=str(Path(url) / "beaker"))
    elif store == "redis":
        # Beaker's keys are "beaker_cache:<id>:session", with no prefix option: load.py
        # deletes them by the ids in its clients' cookies.
        options.update(type="ext:redis", url=url)
    else:
        options.update(type="ext:database", url=url, table_name=namespace)
    app = _peer_app(example, session_of, save)
    app.wsgi_app = SessionMiddleware(app.wsgi_app, **options)
    return app


def _flask_session(example: ModuleType, store: str, url: str, namespace: str, key: str) -> Any:
    import flask
    from flask_session import Session

    app = _peer_app(example, lambda: flask.session, _no_save)
    app.secret_key = key
    app.permanent_session_lifetime = TIMEOUT
    if store == "file":
        from cachelib import FileSystemCache

        # threshold=0: no pruning by file count, like the other file stores here.
        cache = FileSystemCache(str(Path(url) / "flask-session"), threshold=0)
        app.config.update(SESSION_TYPE="cachelib", SESSION_CACHELIB=cache)
    elif store == "redis":
        import redis

        app.config.update(
            SESSION_TYPE="redis",
            SESSION_REDIS=redis.Redis.from_url(url),
            SESSION_KEY_PREFIX=namespace,
        )
    elif store == "memcached":
        from _contenders import memcached_address
        from pymemcache.client.base import PooledClient

        # bench.py gives it the plain Client its documentation shows, one socket: here
        # 8 threads share it, so the same client pooled, with the same defaults (writes
        # sent without waiting for the reply among them).
        app.config.update(
            SESSION_TYPE="memcached",
            SESSION_MEMCACHED=PooledClient(memcached_address(url)),
            SESSION_KEY_PREFIX=namespace,
        )
    else:
        from flask_sqlalchemy import SQLAlchemy

        app.config.update(SQLALCHEMY_DATABASE_URI=url)
        app.config.update(
            SESSION_TYPE="sqlalchemy",
            SESSION_SQLALCHEMY=SQLAlchemy(app),
            SESSION_SQLALCHEMY_TABLE=namespace,
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        Session(app)
    return app
