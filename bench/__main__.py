"""Run the benchmarks (all, or those named: `python -m bench stack flink`) and print their figures.

`--profile replicated` runs the benches that take a profile (capacity) against that profile's
stack; the others need the default one.

Each module has `run() -> dict`; its figures are printed as they come and summed up at the end
in bench/results.json (git-ignored) for the closing notes.
"""

from __future__ import annotations

import importlib
import inspect
import json
import logging
import sys
import time
import traceback

from stack import orchestrator
from stack.config import StackSettings

BENCHES = [
    "stack", "mqtt_edge", "bridge", "flink", "dedup_options", "query_api", "fleet_reads", "observability",
    "console", "capacity",
]


def _profile(argv: list[str]) -> tuple[list[str], str]:
    """The bench names and `--profile NAME` (default: "default")."""
    names, profile = list(argv), "default"
    if "--profile" in names:
        at = names.index("--profile")
        if at + 1 >= len(names):
            raise SystemExit("--profile needs a name: default or replicated")
        profile = names[at + 1]
        del names[at : at + 2]
    return names, profile


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpcore", "cassandra"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    names, profile = _profile(argv)
    chosen = names or BENCHES
    results: dict[str, object] = {}
    failed = 0
    settings = StackSettings()
    was_up = all(state == "running" for _, state, _ in orchestrator.status(settings))
    for name in chosen:
        if name != "stack":
            # Every bench but the stack's own measures against the running pipeline.
            orchestrator.up(settings)
        started = time.monotonic()
        sys.stdout.write(f"\n=== bench {name} ===\n")
        sys.stdout.flush()
        try:
            bench = importlib.import_module(f"bench.{name}").run
            if "profile" in inspect.signature(bench).parameters:
                figures = bench(profile=profile)
            elif profile != "default":
                figures = {"skipped": f"measures the default profile only, not {profile}"}
            else:
                figures = bench()
        except Exception:
            failed += 1
            traceback.print_exc()
            figures = {"error": traceback.format_exc(limit=3)}
        figures["bench_seconds"] = round(time.monotonic() - started, 1)
        results[name] = figures
        sys.stdout.write(json.dumps(figures, indent=2, default=str) + "\n")
        sys.stdout.flush()
    if not was_up:
        orchestrator.down(settings)
    out = settings.stack_dir / "bench-results.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str))
    sys.stdout.write(f"\nall figures: {out}\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
