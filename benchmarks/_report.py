"""Turning the run's results into the Markdown table, the JSON file and the charts."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _compare import Cell, summary_counts

US = 1e6


def _us(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    value = seconds * US
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _x(ratio: float | None) -> str:
    if ratio is None:
        return "–"
    if ratio >= 10:
        return f"{ratio:.0f}×"
    return f"{ratio:.2f}×"


def _g(value: float) -> str:
    return f"{value:.3g}"


def round_trips(store: str, counts: dict[str, float] | None) -> str:
    """One request's store traffic, compactly: what the "round trips" column shows."""
    if not counts:
        return "0"
    c = summary_counts(counts)
    if store == "redis":
        if not c["redis_round_trips"]:
            return "0"
        return f"{_g(c['redis_round_trips'])} rt / {_g(c['redis_server_commands'])} cmd"
    if store == "memcached":
        return f"{_g(c['memcached_round_trips'])} rt" if c["memcached_round_trips"] else "0"
    if store == "postgresql" and counts.get("pg_round_trips"):
        return f"{_g(counts['pg_round_trips'])} rt / {_g(c['sql_statements'])} st"
    if store in ("sqlite", "postgresql"):
        if not c["sql_statements"]:
            return "0"
        control = sum(
            c[k] for k in ("sql_begin", "sql_commit", "sql_rollback", "sql_pool_reset", "sql_ping")
        )
        text = f"{_g(c['sql_statements'])} st"
        return text + (f" +{_g(control)} tx" if control else "")
    if store == "file":
        return f"{_g(c['files_opened'])} open" if c["files_opened"] else "0"
    return "–"


def _cookie(contenders: dict[str, Any], name: str) -> str:
    if name not in contenders:
        return "n/a"
    return "yes" if contenders[name].get("set_cookie") else "no"


def _trips(store: str, contenders: dict[str, Any], name: str) -> str:
    if name not in contenders:
        return "n/a"
    return round_trips(store, contenders[name].get("counts"))


def store_round_trips(store: str, counts: dict[str, float]) -> float:
    """The number the round-trip targets check: commands, statements or files."""
    if store == "redis":
        return counts.get("redis_round_trips", 0.0)
    if store == "memcached":
        return counts.get("memcached_round_trips", 0.0)
    if store == "postgresql":
        return counts.get("pg_round_trips", 0.0)
    if store == "sqlite":
        return counts.get("sql_statements", 0.0)
    if store == "file":
        return counts.get("files_opened", 0.0)
    return 0.0


# -- per-cell figures -------------------------------------------------------------------


def cell_figures(cell: Cell) -> dict[str, Any]:
    """The medians and paired ratios of one scenario on one store."""
    out: dict[str, Any] = {"scenario": cell.scenario, "store": cell.store, "contenders": {}}
    for family, timings in (("wsgi", cell.wsgi), ("flask", cell.flask)):
        if timings is None:
            continue
        for name in timings.rounds:
            low, high = timings.spread(name)
            out["contenders"][name] = {
                "family": family,
                "median_us": timings.median(name) * US,
                "p25_us": low * US,
                "p75_us": high * US,
                "batch": cell.batches.get(name),
                "counts": cell.counts.get(name, {}),
                "set_cookie": cell.set_cookie.get(name),
            }
    w, f = cell.wsgi, cell.flask
    ratios: dict[str, float | None] = {}
    if w is not None and "wsgisession" in w.rounds:
        ratios["ws_over_floor_us"] = w.overhead("wsgisession", "floor") * US
        ratios["ws_x_floor"] = w.paired(lambda r: r["wsgisession"] / r["floor"])
        for other in ("passthrough", "raw", "beaker"):
            if other in w.rounds:
                ratios[f"ws_overhead_vs_{other}"] = w.overhead_ratio("wsgisession", other, "floor")
                ratios[f"ws_x_{other}"] = w.paired(lambda r, o=other: r["wsgisession"] / r[o])
                ratios[f"{other}_over_floor_us"] = w.overhead(other, "floor") * US
        if "wsgisession-unsealed" in w.rounds:
            ratios["seal_us"] = w.overhead("wsgisession", "wsgisession-unsealed") * US
            ratios["seal_pct"] = (
                100
                * (w.paired(lambda r: r["wsgisession"] / r["wsgisession-unsealed"]) or math.nan)
                - 100
            )
    if f is not None and "flask+wsgisession" in f.rounds:
        fws = "flask+wsgisession"
        ratios["flask_ws_over_flask_pct"] = (
            100 * (f.paired(lambda r: r[fws] / r["flask"]) or math.nan) - 100
        )
        ratios["flask_ws_over_flask_us"] = f.overhead(fws, "flask") * US
        for other in ("flask-session", "flask-cookie"):
            if other in f.rounds:
                ratios[f"flask_ws_overhead_vs_{other}"] = f.overhead_ratio(fws, other, "flask")
                ratios[f"{other}_over_flask_us"] = f.overhead(other, "flask") * US
    out["ratios"] = ratios
    return out


# -- targets -------------------------------------------------------------------------

#: Why a target is missed, where the reason is known; see benchmarks/README.md, "Performance".
WHY: dict[str, str] = {
    "untouched-overhead": (
        "the pass-through stores a dict and wraps start_response: about 0.35 µs over the"
        " floor. wsgisession builds the lazy Session (nothing is read until it is"
        " touched), holds the status and headers back until the application has returned"
        " (a request that raises after start_response saves nothing), and lets go of the"
        " environ when the response ends: about 1 µs of object creation and calls, with"
        " no store work. Under callgrind that is about 9,900 instructions a request over"
        " the floor against the pass-through's 3,750: a 35-slot Session (about 2,500 to"
        " create and free), four Python calls where the pass-through makes two (about 500"
        " each, one through the instance's __call__), two bound methods, and what the"
        " finished session keeps of the request. Going to 2x would mean passing"
        " start_response straight through, which the saving rules forbid."
    ),
    "untouched-flask": (
        "Flask answers with a closing iterator, not a list, so wsgisession wraps the body"
        " to save what changes while it is produced and to notice a body that fails. The"
        " wrapper is a plain loop, but it is one more object, a generator and two more"
        " calls: about 4,900 instructions under callgrind (the generator 1,200 of them),"
        " on top of the 9,900 an untouched request costs around a list body, where 3% of"
        " Flask's request is about 10,200."
        " The same code also runs slower in Flask's larger working set on this 2-core VM."
        " Flask-Session makes the same requests 2 to 600 times as costly as Flask alone."
    ),
    "read-vs-raw": (
        "the raw driver checks no signature, hashes no id, opens no seal and applies no"
        " expiry or policy; wsgisession's fixed cost for those is about 9 µs a read (the"
        " cookie check a quarter of it, the seal 1.3 µs, decoding, the session object,"
        " Vary, metrics), the whole ratio on the memory store (raw: 3.7 µs) and most of it"
        " on the file store. On SQLite (a 67 µs read) the same 9 µs plus the seal's"
        " variance between the two tables; on PostgreSQL, Redis and memcached, where a"
        " round trip dominates, the ratio is 1.2 to 1.5. There the fixed cost runs right"
        " after the store's reply, and code run right after a wait runs 2 to 3 times"
        " slower here than alone (benchmarks/wakeup.py: wsgisession's memory-store read,"
        " 18 to 25 µs alone, takes 50 to 75 µs after a Redis GET, and the raw driver's"
        " memory read is slowed as much): with the same store work as the raw driver's,"
        " a read would come to about 1.45 times the raw driver's on Redis and 1.5 to 1.8"
        " on memcached. On Redis the store's commands skip redis-py's client layer,"
        " about 45 µs a command here, which the raw driver goes through."
    ),
    "write-vs-raw": (
        "as for reads, plus what keeps concurrent requests' keys: merging onto the record"
        " loaded, and a compare-and-set where the raw driver overwrites (Redis: a script"
        " reading the record's header before its SET, 5 commands on the server against"
        " 2; memcached: gets and cas; files: a lock file and a re-read, 4 files opened"
        " against 2); and sealing, 5 µs more on the memory store."
    ),
    "new-vs-raw": (
        "the raw driver stores unsigned JSON under a random key; a new session also draws"
        " a 256-bit id, derives its record key and cipher (about 2 µs, new ids miss the"
        " cache), seals, hashes the id, signs the cookie and builds Set-Cookie with Vary"
        " and Cache-Control, the whole ratio on the memory store. The file store creates"
        " a record with a temp file linked into place (it must fail if the name is"
        " taken), two system calls more than the raw rename; in a young store, as here,"
        " most new sessions also make their shard directory (a flat directory needs"
        " none): about 340 µs a new session in an empty store against 145 µs once 70,000"
        " sessions have made most of them, timed on the store alone."
    ),
    "vs-beaker": (
        "Beaker's Redis save is a plain SET; wsgisession's is a compare-and-set script"
        " (3 more commands on the server), which keeps concurrent requests' keys. On the"
        " server the script takes 18 to 19 µs where a SET takes 1.5 to 2, and no script"
        " can take much less: one that only returns takes 6.5 to 7 µs with the save's"
        " arguments, and each command it calls 2.5 to 4 more."
    ),
    "vs-flask-session": (
        "on writes and new sessions on Redis, files and memcached, Flask-Session"
        " overwrites (memcached: without waiting for the reply, so a failed write goes"
        " unnoticed) where wsgisession compares and sets, and seals. On 100 KB sessions"
        " both decode in C, but wsgisession also finds whether the values read changed in"
        " place (a walk of the cart's objects when it is read, 30 µs, then an encoding"
        " and the same walk at the save, 90 µs), where Flask-Session writes everything"
        " back on every request. On Redis the 100 KB record goes to a staging key in a"
        " pipeline with the compare-and-set script (60 µs more than a plain SET); on"
        " Redis and memcached Flask-Session also moves a smaller msgpack record."
    ),
    "seal-small": (
        "a read opens a seal and a write opens one and seals one: the same 14,000"
        " instructions a read and 30,000 a write on every store under callgrind (each"
        " AES-GCM call through cryptography about 5,000 of them), about 1.2 µs a seal or"
        " an open timed in a loop. Inside requests it costs more, and more again after a"
        " store's system calls: alternating sealed and unsealed requests one by one (two"
        " twins alike differ by under 1 µs that way), sealing cost 1.6 µs a read and 5 a"
        " write on the memory store, 2 µs a file read, 5.5 µs a Redis read and 14 a"
        " write, and 22 µs a file write. The kernel's work between requests evicts"
        " OpenSSL's and cryptography's code and tables from the CPU's caches, and each"
        " sealed request brings them back."
    ),
    "seal-big": (
        "a value of 16 KB or more is sealed apart, and a save that leaves it unchanged"
        " copies its seal: the 100 KB session pays one decryption of it a request (about"
        " 30 µs on this CPU), not an encryption as well."
    ),
    "refresh-no-rewrite": (
        "memcached's touch would extend the item but leave the expiry recorded inside it"
        " stale, so a refresh rewrites the record with cas."
    ),
}


#: The largest overhead over the floor, as a multiple of the raw driver's, per scenario
#: and store ("*": any other store): a fixed cost that stores answering in
#: microseconds can see, and no more than a fifth more where a round trip dominates.
RAW_LIMITS: dict[str, dict[str, float]] = {
    "read": {"memory": 2.0, "file": 2.0, "*": 1.2},
    "write": {"memory": 2.0, "file": 2.0, "*": 1.2},
    "new": {"*": 1.3},
}


def _target(
    targets: list[dict[str, Any]],
    tid: str,
    text: str,
    where: str,
    value: float | None,
    limit: float,
    shown: Callable[[float], str],
    *,
    higher_is_better: bool = False,
) -> None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        targets.append(
            {
                "id": tid,
                "target": text,
                "where": where,
                "value": None,
                "limit": limit,
                "met": None,
                "by": "not measured",
                "why": "",
            }
        )
        return
    met = value >= limit if higher_is_better else value <= limit
    by = ""
    if not met and limit == 0:
        by = f"{shown(value)} instead of none"
    elif not met:
        by = f"{abs(value / limit - 1) * 100:.0f}% " + ("below" if higher_is_better else "over")
    targets.append(
        {
            "id": tid,
            "target": text,
            "where": where,
            "value": value,
            "shown": shown(value),
            "limit": limit,
            "limit_shown": shown(limit),
            "met": met,
            "by": by,
            "why": "" if met else WHY.get(tid, WHY.get(tid.split(":")[0], "")),
        }
    )


def check_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Every target of the issue, checked against this run's figures."""
    targets: list[dict[str, Any]] = []
    x = _x
    for cell in results["cells"]:
        s, store, r = cell["scenario"], cell["store"], cell["ratios"]
        where = f"{s} / {store}"
        ws = cell["contenders"].get("wsgisession", {})
        counts = ws.get("counts", {})
        rt = store_round_trips(store, counts)
        if s == "untouched":
            _target(
                targets,
                "untouched-overhead",
                "untouched: overhead ≤ 2× the pass-through's",
                where,
                r.get("ws_overhead_vs_passthrough"),
                2.0,
                x,
            )
            _target(
                targets,
                "untouched-round-trips",
                "untouched: zero store round trips",
                where,
                rt + counts.get("redis_server_commands", 0),
                0,
                _g,
            )
            _target(
                targets,
                "untouched-cookie",
                "untouched: no Set-Cookie",
                where,
                float(bool(ws.get("set_cookie"))),
                0,
                lambda v: "yes" if v else "no",
            )
            _target(
                targets,
                "untouched-flask",
                "untouched: Flask+wsgisession within 3% of Flask",
                where,
                r.get("flask_ws_over_flask_pct"),
                3.0,
                lambda v: f"{v:+.1f}%",
            )
        if s in ("read", "write"):
            _target(
                targets,
                "seal-small",
                f"{s}: encryption at rest costs at most 3 µs",
                where,
                r.get("seal_us"),
                3.0,
                lambda v: f"{v:+.1f} µs",
            )
        if s == "big":
            _target(
                targets,
                "seal-big",
                "big: encryption at rest costs at most 10%",
                where,
                r.get("seal_pct"),
                10.0,
                lambda v: f"{v:+.1f}%",
            )
        # Round trips are a network notion: the memory store has none and the file store
        # shows the files it opens, which the table reports without a target.
        if store in ("sqlite", "postgresql", "redis", "memcached"):
            expected = {"read": 1, "write": 2, "new": 1, "refresh": 2}.get(s)
            if expected is not None:
                _target(
                    targets,
                    f"{s}-round-trips",
                    f"{s}: {expected} store round trip{'s' if expected > 1 else ''}",
                    where,
                    rt,
                    expected,
                    _g,
                )
        if s in ("read", "write", "new"):
            limit = RAW_LIMITS[s].get(store, RAW_LIMITS[s]["*"])
            _target(
                targets,
                f"{s}-vs-raw",
                f"{s}: overhead ≤ {limit:g}× the raw driver's"
                + (" on the memory and file stores" if store in ("memory", "file") else ""),
                where,
                r.get("ws_overhead_vs_raw"),
                limit,
                x,
            )
        if s == "refresh":
            from _scenarios import REFRESH_DATA

            _target(
                targets,
                "refresh-no-rewrite",
                f"refresh: expiry update only (bytes sent ≪ the {REFRESH_DATA} B of data)",
                where,
                counts.get("bytes_sent", 0.0),
                REFRESH_DATA / 2,
                lambda v: f"{v:.0f} B",
            )
        # Faster than every peer on every cell: overhead over the floor at most theirs.
        if "ws_overhead_vs_beaker" in r:
            _target(
                targets,
                "vs-beaker",
                "overhead ≤ Beaker's",
                where,
                r["ws_overhead_vs_beaker"],
                1.0,
                x,
            )
        if "flask_ws_overhead_vs_flask-session" in r:
            _target(
                targets,
                "vs-flask-session",
                "overhead ≤ Flask-Session's",
                where,
                r["flask_ws_overhead_vs_flask-session"],
                1.0,
                x,
            )
    growth = results.get("growth", {})
    for store, g in growth.get("live", {}).items():
        sizes = g["sizes"]
        if len(sizes) < 2:
            continue
        for op in ("read", "write"):
            # Judged against the constant reference timed in the same rounds, which
            # cancels the drift of the machine between steps minutes apart.
            normalized = g.get(f"{op}_vs_ref")
            change = normalized[-1] / normalized[0] if normalized else g[op][-1] / g[op][0]
            _target(
                targets,
                "growth-live",
                f"{op}: time within 20% from {sizes[0]:,} to {sizes[-1]:,} live sessions",
                f"{op} / {store}",
                change,
                1.2,
                x,
            )
    sizes = growth.get("sizes")
    if sizes:
        t, n = sizes["wsgisession"], sizes["sizes"]
        # Linear: going from 100 KB to 1 MB costs about 10x what going from 100 B to 100 KB
        # costs per byte; a quadratic step would show as a much larger ratio.
        per_byte_small = (t[-2] - t[0]) / (n[-2] - n[0])
        per_byte_large = (t[-1] - t[-2]) / (n[-1] - n[-2])
        _target(
            targets,
            "size-linear",
            "time linear in session size (cost per byte, 1 MB vs 100 KB)",
            "memory",
            per_byte_large / per_byte_small,
            1.5,
            x,
        )
        for size, ratio in zip(n, sizes["serializer_ratio"], strict=True):
            _target(
                targets,
                "serializer-speed",
                "serializer ≥ half as fast as plain json",
                f"{size:,} B",
                ratio,
                0.5,
                x,
                higher_is_better=True,
            )
    purge = growth.get("purge")
    if purge:
        _target(
            targets,
            "purge-batch",
            "a cleanup batch holds no more than its batch",
            f"{purge['expired_rows']:,} rows",
            purge["max_rows_per_batch"],
            purge["batch_size"],
            lambda v: f"{v:.0f} rows",
        )
    memory = results.get("memory", {})
    if "live" in memory:
        _target(
            targets,
            "memory-live",
            "10,000 sessions of ~1 KB ≤ 2× their serialized size",
            "memory store",
            memory["live"]["ratio"],
            2.0,
            x,
        )
    if "steady" in memory:
        _target(
            targets,
            "memory-steady",
            "no growth over 100,000 requests once warm",
            "memory store",
            memory["steady"]["growth_bytes"] / 1024,
            64.0,
            lambda v: f"{v:.1f} KiB",
        )
    return targets


# -- Markdown ---------------------------------------------------------------------------


def markdown(results: dict[str, Any]) -> str:
    """The whole report as Markdown."""
    lines = ["# wsgisession benchmark", "", *_header(results)]
    lines += ["", "## Plain WSGI", "", *_wsgi_table(results)]
    lines += ["", "## Around one Flask app", "", *_flask_table(results)]
    lines += ["", "## Encryption at rest", "", *_seal_table(results)]
    lines += ["", "## Targets", "", *_targets_summary(results)]
    lines += ["", "Every check:", "", *_targets_table(results)]
    lines += _growth_markdown(results)
    lines += _memory_markdown(results)
    return "\n".join(lines) + "\n"


def readme_section(results: dict[str, Any]) -> str:
    """The figures the "Performance" section of benchmarks/README.md quotes, as Markdown."""
    lines = [*_header(results), "", "Plain WSGI:", "", *_wsgi_table(results)]
    lines += ["", "Around one Flask app:", "", *_flask_table(results)]
    lines += ["", "Encryption at rest:", "", *_seal_table(results)]
    lines += ["", "Targets:", "", *_targets_summary(results)]
    lines += [line.replace("## ", "#### ") for line in _growth_markdown(results)]
    lines += [line.replace("## ", "#### ") for line in _memory_markdown(results)]
    return "\n".join(lines) + "\n"


def _header(results: dict[str, Any]) -> list[str]:
    meta = results["meta"]
    versions = ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
    out = [f"Run on {meta['date']}: {meta['machine']}. {meta['method']}", ""]
    out.append(f"Versions: {versions}.")
    if meta.get("unreachable"):
        out += ["", "Left out (unreachable): " + ", ".join(meta["unreachable"]) + "."]
    return out


def _wsgi_table(results: dict[str, Any]) -> list[str]:
    lines = [
        "µs per request, median over rounds. *over floor*: wsgisession's cost above the bare"
        " app. *vs limit* and *vs Beaker*: wsgisession's overhead over the floor divided by"
        " theirs, paired round by round (below 1 is cheaper). The limit is the pass-through"
        " middleware for *untouched* and the raw driver otherwise. Round trips are per"
        " request: Redis round trips / commands the server ran; PostgreSQL network round"
        " trips / statements; memcached round trips; SQLite statements + transaction"
        " control; files opened.",
        "",
        "| scenario | store | floor | limit | wsgisession | over floor | vs limit | Beaker |"
        " vs Beaker | round trips: ws | raw | Beaker | Set-Cookie |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|---|---|---|---|",
    ]
    for cell in results["cells"]:
        c, r, store = cell["contenders"], cell["ratios"], cell["store"]
        limit_name = "passthrough" if cell["scenario"] == "untouched" else "raw"
        med = {name: v["median_us"] / US for name, v in c.items()}
        lines.append(
            f"| {cell['scenario']} | {store} | {_us(med.get('floor'))}"
            f" | {_us(med.get(limit_name))}"
            f" | {_us(med.get('wsgisession'))} | {_us((r.get('ws_over_floor_us') or 0) / US)}"
            f" | {_x(r.get(f'ws_overhead_vs_{limit_name}'))} | {_us(med.get('beaker'))}"
            f" | {_x(r.get('ws_overhead_vs_beaker'))}"
            f" | {round_trips(store, c.get('wsgisession', {}).get('counts'))}"
            f" | {round_trips(store, c.get('raw', {}).get('counts')) if 'raw' in c else '–'}"
            f" | {_trips(store, c, 'beaker')}"
            f" | {_cookie(c, 'wsgisession')} |"
        )
    return lines


def _flask_table(results: dict[str, Any]) -> list[str]:
    lines = [
        "µs per request. *+ws*: wsgisession's cost over Flask with no session, in % and as"
        " a fraction of Flask-Session's and of Flask's cookie session's own cost over Flask"
        " (paired by round). Flask-Session loads the session on every request and, with its"
        " default `SESSION_REFRESH_EACH_REQUEST`, writes it back and re-sends the cookie.",
        "",
        "| scenario | store | Flask | + wsgisession | Flask-Session | Flask cookie | +ws | ws / FS"
        " | ws / cookie | round trips: ws | Flask-Session | Set-Cookie: ws / FS |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|---|---|---|",
    ]
    for cell in results["cells"]:
        c, r, store = cell["contenders"], cell["ratios"], cell["store"]
        med = {name: v["median_us"] / US for name, v in c.items()}
        if "flask" not in med:
            continue
        pct = r.get("flask_ws_over_flask_pct")
        lines.append(
            f"| {cell['scenario']} | {store} | {_us(med.get('flask'))}"
            f" | {_us(med.get('flask+wsgisession'))} | {_us(med.get('flask-session'))}"
            f" | {_us(med.get('flask-cookie'))} | {'–' if pct is None else f'{pct:+.1f}%'}"
            f" | {_x(r.get('flask_ws_overhead_vs_flask-session'))}"
            f" | {_x(r.get('flask_ws_overhead_vs_flask-cookie'))}"
            f" | {round_trips(store, c.get('flask+wsgisession', {}).get('counts'))}"
            f" | {_trips(store, c, 'flask-session')}"
            f" | {_cookie(c, 'flask+wsgisession')} / {_cookie(c, 'flask-session')} |"
        )
    return lines


def _seal_table(results: dict[str, Any]) -> list[str]:
    lines = [
        "µs per request, median over rounds: wsgisession as configured by default (records"
        " sealed) and with `encrypt=False`, sharing one store (table, directory, key prefix);"
        " the cost is their difference, paired round by round.",
        "",
        "| scenario | store | sealed | unsealed | cost | cost % |",
        "|---|---|--:|--:|--:|--:|",
    ]
    for cell in results["cells"]:
        c, r = cell["contenders"], cell["ratios"]
        if "wsgisession-unsealed" not in c or cell["scenario"] == "untouched":
            continue
        med = {name: v["median_us"] / US for name, v in c.items()}
        cost, pct = r.get("seal_us"), r.get("seal_pct")
        lines.append(
            f"| {cell['scenario']} | {cell['store']} | {_us(med.get('wsgisession'))}"
            f" | {_us(med.get('wsgisession-unsealed'))}"
            f" | {'–' if cost is None else f'{cost:+.1f}'}"
            f" | {'–' if pct is None else f'{pct:+.1f}%'} |"
        )
    return lines


def _targets_summary(results: dict[str, Any]) -> list[str]:
    """One line per target: met everywhere, or where it is missed, by how much, and why."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for t in results["targets"]:
        groups.setdefault(t["target"], []).append(t)
    met_count = sum(1 for t in results["targets"] if t["met"])
    lines = [f"{met_count} of {len(results['targets'])} checks met.", ""]
    for text, checks in groups.items():
        missed = [t for t in checks if t["met"] is False]
        measured = [t for t in checks if t["met"] is not None]
        if not missed:
            lines.append(f"- **met** ({len(measured)} of {len(measured)}): {text}.")
            continue
        where = "; ".join(f"{t['where']} {t['shown']} ({t['by']})" for t in missed)
        lines.append(
            f"- **missed** in {len(missed)} of {len(measured)}: {text}. Missed at: {where}."
        )
        whys = sorted({t["why"] for t in missed if t["why"]})
        lines += [f"  *Why:* {why}" for why in whys]
    return lines


def _targets_table(results: dict[str, Any]) -> list[str]:
    lines = ["| target | where | measured | limit | met |", "|---|---|--:|--:|---|"]
    for t in results["targets"]:
        met = "–" if t["met"] is None else ("met" if t["met"] else f"**missed** by {t['by']}")
        lines.append(
            f"| {t['target']} | {t['where']} | {t.get('shown', '–')}"
            f" | {t.get('limit_shown', t['limit'])} | {met} |"
        )
    return lines


def _growth_markdown(results: dict[str, Any]) -> list[str]:
    growth = results.get("growth", {})
    lines: list[str] = []
    live = growth.get("live", {})
    if live:
        lines += [
            "",
            "## Growth: live sessions",
            "",
            "µs per request, cycling over 1,000 sessions drawn from the records the step"
            " added; beside each, the time relative to the same requests on a reference"
            " store of 1,000 sessions on the same server, timed in the same rounds (what"
            " the target is judged on, as steps are minutes apart and the machine drifts).",
            "",
            "| store | live sessions | read | vs reference | write | vs reference | filled in |",
            "|---|--:|--:|--:|--:|--:|--:|",
        ]
        for store, g in live.items():
            for i, size in enumerate(g["sizes"]):
                read_ref = g.get("read_vs_ref", [None] * len(g["sizes"]))[i]
                write_ref = g.get("write_vs_ref", [None] * len(g["sizes"]))[i]
                lines.append(
                    f"| {store} | {size:,} | {_us(g['read'][i])} | {_x(read_ref)}"
                    f" | {_us(g['write'][i])} | {_x(write_ref)}"
                    f" | {g['fill_seconds'][i]:.1f} s |"
                )
        if growth.get("live_note"):
            lines += ["", growth["live_note"]]
    sizes = growth.get("sizes")
    if sizes:
        lines += [
            "",
            "## Growth: session size",
            "",
            "A read and a write of a session of"
            " that size on the memory store, µs per request; the serializer's dumps+loads"
            " against plain `json` on the same data.",
            "",
            "| size | serialized | wsgisession | raw (json + dict) | serializer | json |"
            " json speed / ours |",
            "|--:|--:|--:|--:|--:|--:|--:|",
        ]
        for i, size in enumerate(sizes["sizes"]):
            lines.append(
                f"| {size:,} B | {sizes['serialized'][i]:,} B | {_us(sizes['wsgisession'][i])}"
                f" | {_us(sizes['raw'][i])} | {_us(sizes['serializer'][i])}"
                f" | {_us(sizes['json'][i])} | {_x(sizes['serializer_ratio'][i])} |"
            )
    purge = growth.get("purge")
    if purge:
        lines += [
            "",
            "## Purge",
            "",
            f"`cleanup()` of {purge['expired_rows']:,} expired PostgreSQL rows (beside"
            f" {purge['live_rows']:,} live ones): {purge['removed']:,} removed in"
            f" {purge['seconds']:.1f} s, {purge['batches']} batches of at most"
            f" {purge['max_rows_per_batch']} rows (batch median {_us(purge['batch_p50'])} µs,"
            f" max {_us(purge['batch_max'])} µs); {purge['live_left']:,} live rows left."
            f" Meanwhile {purge['traffic_requests']:,} load+save requests on live rows of the"
            f" same table took {_us(purge['traffic_p50'])} µs at the median and"
            f" {_us(purge['traffic_max'])} µs at worst.",
        ]
    return lines


def _memory_markdown(results: dict[str, Any]) -> list[str]:
    memory = results.get("memory", {})
    lines: list[str] = []
    if "live" in memory:
        m = memory["live"]
        lines += [
            "",
            "## Memory",
            "",
            f"- {m['sessions']:,} live sessions of {m['mean_serialized']:.0f} B serialized"
            f" ({m['serialized_bytes'] / 1024:,.0f} KiB in all) hold"
            f" {m['held_bytes'] / 1024:,.0f} KiB in the memory store process:"
            f" {m['ratio']:.2f}× (tracemalloc).",
        ]
    if "steady" in memory:
        m = memory["steady"]
        lines.append(
            f"- {m['requests']:,} requests on {m['sessions']} sessions"
            f" after {m['warm_requests']:,}"
            f" warm-up requests: traced memory {m['growth_bytes'] / 1024:+.1f} KiB"
            f" (max RSS {m['max_rss_growth_kib']:+,} KiB)."
        )
    if "metrics" in memory:
        m = memory["metrics"]
        lines.append(
            f"- Metrics: {m['untouched_requests']:,} untouched requests counted"
            f" {m['untouched_counted']} (only requests that touch the session are); on a"
            f" touched read the metrics calls cost"
            f" {m['touched_read_metrics_seconds'] * US:.2f} µs."
        )
    return lines


# -- files ---------------------------------------------------------------------------


def write_json(results: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(results, indent=1, default=str) + "\n")


def charts(results: dict[str, Any], directory: Path) -> list[Path]:
    """Bars per scenario (plain WSGI and Flask) and the two growth curves, as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[Path] = []
    cells = results["cells"]
    scenarios = list(dict.fromkeys(c["scenario"] for c in cells))
    stores = list(dict.fromkeys(c["store"] for c in cells))
    families = {
        "wsgi": ("floor", "passthrough", "raw", "wsgisession", "beaker"),
        "flask": ("flask", "flask+wsgisession", "flask-session", "flask-cookie"),
    }
    for family, names in families.items() if cells else ():
        fig, axes = plt.subplots(2, 3, figsize=(16, 9), squeeze=False)
        for ax, scenario in zip(axes.flat, scenarios, strict=False):
            width = 0.8 / len(names)
            for i, name in enumerate(names):
                values = []
                for store in stores:
                    found = [c for c in cells if c["scenario"] == scenario and c["store"] == store]
                    v = found[0]["contenders"].get(name) if found else None
                    values.append(v["median_us"] if v else 0)
                xs = [j + (i - len(names) / 2 + 0.5) * width for j in range(len(stores))]
                ax.bar(xs, values, width, label=name)
            ax.set_yscale("log")
            ax.set_xticks(range(len(stores)), stores)
            ax.set_title(scenario)
            ax.set_ylabel("µs per request (log)")
            ax.grid(axis="y", alpha=0.3)
        axes.flat[0].legend(fontsize=8)
        fig.suptitle(
            f"wsgisession benchmark: {'plain WSGI' if family == 'wsgi' else 'one Flask app'}"
        )
        fig.tight_layout()
        path = directory / f"bars-{family}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    growth = results.get("growth", {})
    if growth.get("live"):
        fig, (ax, rel) = plt.subplots(1, 2, figsize=(13, 5))
        for store, g in growth["live"].items():
            for op, style in (("read", "-o"), ("write", "--s")):
                ax.plot(g["sizes"], [v * US for v in g[op]], style, label=f"{store} {op}")
                if g.get(f"{op}_vs_ref"):
                    first = g[f"{op}_vs_ref"][0]
                    rel.plot(
                        g["sizes"],
                        [v / first for v in g[f"{op}_vs_ref"]],
                        style,
                        label=f"{store} {op}",
                    )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("live sessions")
        ax.set_ylabel("µs per request")
        ax.set_title("Time per request as live sessions grow")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        rel.set_xscale("log")
        rel.axhline(1.2, color="grey", linestyle=":", label="target: +20%")
        rel.set_xlabel("live sessions")
        rel.set_ylabel("time against the reference store, 1 = first step")
        rel.set_title("The same, against a constant reference timed alongside")
        rel.grid(alpha=0.3)
        rel.legend(fontsize=8)
        path = directory / "growth-live.png"
        fig.tight_layout()
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    if growth.get("sizes"):
        s = growth["sizes"]
        fig, ax = plt.subplots(figsize=(8, 5))
        for name in ("wsgisession", "raw", "serializer", "json"):
            ax.plot(s["sizes"], [v * US for v in s[name]], "-o", label=name)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("session size, bytes of JSON")
        ax.set_ylabel("µs per request")
        ax.set_title("Time per request as the session grows (memory store)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        path = directory / "growth-size.png"
        fig.tight_layout()
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written
