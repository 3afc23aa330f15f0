"""Profile wsgisession's request path with cProfile, one scenario at a time.

::

    python benchmarks/profile_hot_path.py                 # memory store, all four
    python benchmarks/profile_hot_path.py --store redis read write
    python benchmarks/profile_hot_path.py --pyinstrument  # sampling: less distortion
    python benchmarks/profile_hot_path.py --contender flask+wsgisession big

Prints the functions that take the most time of their own, per scenario (or
pyinstrument's call tree), and writes each profile to
``benchmarks/results/profile-<store>-<scenario>.txt`` (``--out`` for elsewhere).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _compare import Comparison
from _contenders import Backends
from _scenarios import SCENARIOS
from _timing import run

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenarios", nargs="*", default=["untouched", "read", "write", "new"])
    parser.add_argument("--store", default="memory")
    parser.add_argument(
        "--contender", default="wsgisession", help="e.g. flask+wsgisession (default wsgisession)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="where profiles are written")
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--pyinstrument", action="store_true", help="sample with pyinstrument")
    parser.add_argument("--pg-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args(argv)
    backends = Backends(
        Path(tempfile.mkdtemp(prefix="wsgisession-profile-")),
        args.pg_url,
        args.redis_url,
        f"wsgisession_profile_{os.getpid()}",
    )
    args.out.mkdir(exist_ok=True)
    try:
        comparison = Comparison(args.store, backends)
        built = comparison.built[args.contender]
        for name in args.scenarios:
            environ = comparison.environ(built, SCENARIOS[name])
            run(built.app, environ, 200)
            title = f"== {args.contender}, {args.store} / {name}: {args.requests:,} requests\n"
            if args.pyinstrument:
                text = title + _sampled(built.app, environ, args.requests)
            else:
                text = title + _profiled(built.app, environ, args.requests, args.top)
            slug = "" if args.contender == "wsgisession" else f"{args.contender}-"
            (args.out / f"profile-{slug}{args.store}-{name}.txt").write_text(text)
            print(text[:6000])
    finally:
        backends.cleanup()
    return 0


def _profiled(app: Any, environ: dict[str, Any], requests: int, top: int) -> str:
    profile = cProfile.Profile()
    profile.enable()
    run(app, environ, requests)
    profile.disable()
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out).strip_dirs()
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return out.getvalue()


def _sampled(app: Any, environ: dict[str, Any], requests: int) -> str:
    from pyinstrument import Profiler

    profiler = Profiler(interval=0.0001)
    profiler.start()
    run(app, environ, requests)
    profiler.stop()
    text: str = profiler.output_text(unicode=False, color=False)
    return text


if __name__ == "__main__":
    raise SystemExit(main())
