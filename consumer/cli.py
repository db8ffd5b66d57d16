"""The ``usage-consumer`` command line: ``run``, ``check`` and ``emulate``.

Start-up failures print one line naming the cause (file, line and key for configuration) and exit
non-zero; ``--debug`` adds the traceback.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import traceback
from pathlib import Path
from types import FrameType

from consumer import __version__
from consumer.errors import ConfigError, FatalError, UsageConsumerError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="usage-consumer", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"usage-consumer {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="consume and deliver until SIGTERM/SIGINT")
    run.add_argument("--config", type=Path, help="configuration YAML (default: built-in defaults + environment)")
    run.add_argument("--destination", action="append", choices=["freshsuccess", "freshpaint"],
                     help="run only this destination's lane (repeatable; default: every enabled destination)")
    run.add_argument("--shutdown-timeout-s", type=float, default=None,
                     help="how long SIGTERM may take to flush in-flight batches (default: shutdown.timeout_s)")

    check = commands.add_parser("check", help="validate the configuration and the mapping, then exit")
    check.add_argument("--config", type=Path)

    commands.add_parser("emulate", help="serve the Freshsuccess and Freshpaint emulators (see --help)",
                        add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    args_list = sys.argv[1:] if argv is None else argv
    if args_list[:1] == ["emulate"]:
        from consumer.emulators.runner import main as emulate

        return emulate(args_list[1:])
    args = _parser().parse_args(args_list)
    try:
        if args.command == "check":
            return _check(args.config)
        return _run(args.config, args.destination, args.shutdown_timeout_s)
    except ConfigError as exc:
        _report(exc, args.debug, "configuration error")
        return 2
    except UsageConsumerError as exc:
        _report(exc, args.debug, "error")
        return 3


def _report(exc: BaseException, debug: bool, what: str) -> None:
    if debug:
        traceback.print_exc()
    print(f"usage-consumer: {what}: {exc}", file=sys.stderr)


def _check(config: Path | None) -> int:
    from consumer.config import load_settings
    from consumer.logs import configure_logging
    from consumer.service import prepare

    configure_logging(level="warning")
    settings = load_settings(config)
    prepared = prepare(settings)
    lanes = [name for name in settings.destinations() if getattr(prepared.mapping, name) is not None]
    print(f"ok: {settings.source}: mapping {prepared.mapping_file} compiles against the reader schema "
          f"({len(prepared.mapping.rule_names)} rules; destinations with rules: {', '.join(lanes) or 'none'})")
    return 0


def _run(config: Path | None, destinations: list[str] | None, shutdown_timeout_s: float | None) -> int:
    from consumer.config import load_settings
    from consumer.logs import configure_logging
    from consumer.service import Service

    settings = load_settings(config)
    configure_logging(level=settings.logging.level, fmt=settings.logging.format, secrets=settings.secret_values())
    service = Service(settings, destinations=destinations)
    signals = 0

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        nonlocal signals
        signals += 1
        if signals > 1:  # a second signal: leave now; undelivered work stays uncommitted (at-least-once)
            os._exit(130)
        print(f"usage-consumer: {signal.Signals(signum).name} received, finishing in-flight batches",
              file=sys.stderr)
        service.stop_event.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        service.start()
    except (ConfigError, FatalError):
        service.close()
        raise
    deadline_s = settings.shutdown.timeout_s if shutdown_timeout_s is None else shutdown_timeout_s
    code = service.run(shutdown_timeout_s=deadline_s)
    for lane in service.lanes:
        if lane.fatal:
            print(f"usage-consumer: {lane.name} stopped: {lane.fatal}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
