"""The project's command line, `iot`: the stack runner's commands plus one entry per service.

Service commands hand their remaining arguments to that service's own `main(argv)`, so
`iot bridge ...` and `python -m bridge ...` are the same program.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import subprocess
import sys
from collections.abc import Callable, Sequence

from gateway.service_main import configure_logging
from stack.errors import StackError

# command -> (module, function, help); the function takes the remaining argv.
DELEGATED: dict[str, tuple[str, str, str]] = {
    "certs": ("stack.commands.devices", "certs_main", "issue or revoke device certificates"),
    "devices": ("stack.commands.devices", "devices_main", "list provisioned devices"),
    "groups": ("stack.commands.devices", "groups_main", "create device groups, add or remove devices"),
    "emulate": ("emulator.__main__", "main", "run emulated devices"),
    "bridge": ("bridge.__main__", "main", "run the MQTT -> Kafka bridge"),
    "writer": ("storage.__main__", "main", "run the aggregates -> Cassandra writer"),
    "migrate": ("storage.migrate", "main", "apply the Cassandra schema"),
    "flink-job": ("flink_jobs.__main__", "main", "submit the aggregation job"),
    "query-api": ("query_api.__main__", "main", "run the query API"),
    "console": ("console.__main__", "main", "run the web console"),
}


def _cmd_up(args: argparse.Namespace) -> int:
    from stack import orchestrator, supervisor
    from stack.config import StackSettings
    from stack.summary import print_summary

    settings = StackSettings.for_profile(args.profile) if args.profile else StackSettings()
    only = set(args.only.split(",")) if args.only else None
    skip = set(args.skip.split(",")) if args.skip else None
    orchestrator.up(settings, only=only, skip=skip)
    # Restarted here if it is absent: nothing else supervises the supervisor.
    supervisor.ensure_running(settings)
    if only is None:
        print_summary(settings)
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    from stack import orchestrator
    from stack.config import StackSettings

    orchestrator.down(StackSettings(), purge=args.purge)
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from stack import orchestrator
    from stack.config import StackSettings

    rows = orchestrator.status(StackSettings())
    healthy = all(state in ("running", "disabled") for _, state, _ in rows)
    if args.json:
        # For programs (the web console's health view): one object per component, same exit code.
        json.dump([{"name": n, "state": s, "detail": d} for n, s, d in rows], sys.stdout)
        sys.stdout.write("\n")
        return 0 if healthy else 3
    width = max(len(name) for name, _, _ in rows)
    for name, state, detail in rows:
        sys.stdout.write(f"{name:<{width}}  {state:<8}  {detail}\n")
    from stack.services.prometheus import alert_lines, firing_alerts

    firing = firing_alerts()
    if firing:
        sys.stdout.write(f"\nalerts firing ({len(firing)}):\n")
        sys.stdout.writelines(f"  {line}\n" for line in alert_lines(firing))
    return 0 if healthy else 3


def _cmd_logs(args: argparse.Namespace) -> int:
    from stack import supervisor
    from stack.config import StackSettings
    from stack.services import by_name

    settings = StackSettings()
    if args.service == supervisor.NAME:
        files = [str(supervisor.spec(settings).log_file)]
    else:
        try:
            service = by_name(settings, args.service)
        except KeyError as exc:
            raise StackError(str(exc)) from exc
        files = [str(spec.log_file) for spec in service.processes()]
    tail = ["tail", "-n", str(args.lines)] + (["-F"] if args.follow else []) + files
    return subprocess.call(tail)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="iot", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="install what is missing and start the whole stack")
    up.add_argument("--only", help="comma-separated services to start (and nothing else)")
    up.add_argument("--skip", help="comma-separated services not to start")
    up.add_argument("--profile", choices=["default", "replicated"],
                    help="default: one node of each service; replicated: 3 Kafka brokers, 3 "
                         "Cassandra nodes, 2 task managers... (docs/replicated.md); unset: the "
                         "profile that runs, or default")
    up.set_defaults(func=_cmd_up)
    down = sub.add_parser("down", help="stop what `iot up` started; keeps the data")
    down.add_argument("--purge", action="store_true", help="also delete all state under the stack dir")
    down.set_defaults(func=_cmd_down)
    status = sub.add_parser("status", help="each component's state and key figures")
    status.add_argument("--json", action="store_true", help="as a JSON list of {name, state, detail}")
    status.set_defaults(func=_cmd_status)
    logs = sub.add_parser("logs", help="show a service's log")
    logs.add_argument("service")
    logs.add_argument("-f", "--follow", action="store_true")
    logs.add_argument("-n", "--lines", type=int, default=50)
    logs.set_defaults(func=_cmd_logs)
    for name, (_, _, help_text) in DELEGATED.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    if command in DELEGATED:
        module_name, func_name, _ = DELEGATED[command]
        rest = argv[argv.index(command) + 1 :]
        func: Callable[[list[str]], int] = getattr(importlib.import_module(module_name), func_name)
        return func(rest)
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    try:
        result: int = args.func(args)
        return result
    except StackError as exc:
        logging.getLogger("iot").error("%s", exc)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
