"""The ``usage-consumer`` command line: ``run``, ``check``, ``emulate``, and the operator tools ``status``,
``map``, ``dlq inspect|replay`` and ``ping``.

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

from confluent_kafka import KafkaException

from consumer import __version__
from consumer.errors import ConfigError, FatalError, UsageConsumerError
from consumer.kafka.failures import kafka_error_text


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
    _add_tool_parsers(commands)
    return parser


def _add_tool_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The operator tools: ``status``, ``map`` (dry run), ``dlq inspect|replay`` and ``ping`` (docs/runbook.md)."""
    status = commands.add_parser(
        "status", help="lag in messages and seconds, members and dead letters per destination, from Kafka alone",
        description="One screen per destination's consumer group: its state, members and their partitions; per "
                    "partition the committed offset, end offset, lag in messages and in seconds (age of the next "
                    "unconsumed record); then dead letters by reason over --window. Joins no group, commits "
                    "nothing.")
    status.add_argument("--config", type=Path)
    status.add_argument("--json", action="store_true", help="machine-readable output (keys in docs/runbook.md)")
    status.add_argument("--watch", nargs="?", type=float, const=5.0, default=None, metavar="SECONDS",
                        help="refresh every SECONDS (default 5) until Ctrl-C")
    status.add_argument("--window", default="1h", metavar="DURATION",
                        help="count dead letters parked in the last DURATION: 90s, 15m, 1h, 1h30m, 7d (default 1h)")
    status.add_argument("--timeout-s", type=float,
                        help="per Kafka request (default: kafka.startup_timeout_s)")
    dry = commands.add_parser(
        "map", help="dry run: show what each sample event would become (no request is sent)",
        description="For each sample event print the rules it matches and the exact requests that would be "
                    "sent (keys masked, body before compression), or why it would be skipped or dead-lettered. "
                    "Samples: JSON lines matching the event schema, Avro object container files, or records "
                    "read from the configured topic (never committed).")
    dry.add_argument("--config", type=Path)
    dry.add_argument("samples", nargs="*", metavar="FILE",
                     help="JSON-lines or Avro container file ('-' reads stdin)")
    dry.add_argument("--from-topic", type=int, metavar="N",
                     help="read N records from kafka.topics instead (the newest, or from --partition/--offset)")
    dry.add_argument("--partition", type=int,
                     help="with --from-topic: the partition to read; with files: the partition the samples "
                          "pretend to come from (default 0)")
    dry.add_argument("--offset", type=int,
                     help="with --from-topic: the first offset to read; with files: the offset of the first "
                          "sample (default 0; it matters for $insert_id when event_id is empty)")
    dry.add_argument("--topic", help="with files: the topic the samples pretend to come from, which picks their "
                                      "stream; with --from-topic: the topic to read (default: every topic the "
                                      "streams name)")
    dry.add_argument("--stream", help="with files: the stream whose schema the samples are written in (needed "
                                      "with several streams, unless --topic picks it)")
    dry.add_argument("--json", action="store_true", help="machine-readable output")

    dlq = commands.add_parser("dlq", help="inspect or replay dead letters")
    dlq_commands = dlq.add_subparsers(dest="dlq_command", required=True)
    inspect = dlq_commands.add_parser(
        "inspect", help="list dead letters with reason, source position and a decoded preview",
        description="List the records of kafka.dead_letter_topic that no replay finished yet (--all: every "
                    "one); read only, nothing is committed.")
    replay = dlq_commands.add_parser(
        "replay", help="send dead letters back to their source topic, or straight to the destinations",
        description="Replay selected dead letters. Each is written to the replay ledger "
                    "(kafka.replay_ledger_topic) right after it was accepted (produce acknowledged with acks=all, "
                    "or the destination answered 2xx); no replay sends a letter the ledger holds, whatever its "
                    "filters or group.")
    for sub in (inspect, replay):
        sub.add_argument("--config", type=Path)
        sub.add_argument("--reason", action="append", metavar="CODE",
                         help="only this dlq.reason (repeatable), e.g. mapping_failed, missing_required_field")
        sub.add_argument("--destination", action="append", choices=["freshsuccess", "freshpaint"],
                         help="only dead letters parked by this destination's lane (repeatable)")
        sub.add_argument("--since", metavar="TIME",
                         help="failed at or after TIME: 2025-01-31T10:00:00Z, 2025-01-31, or ago: 30m, 2h, 7d")
        sub.add_argument("--until", metavar="TIME", help="failed before TIME (same forms as --since)")
        sub.add_argument("--limit", type=int, metavar="N", help="at most N dead letters")
        sub.add_argument("--json", action="store_true", help="machine-readable output")
    inspect.add_argument("--full", action="store_true", help="show whole values and messages, not previews")
    inspect.add_argument("--all", action="store_true", dest="include_replayed",
                         help="also show dead letters a replay already finished (left out by default)")
    replay.add_argument("--to-destinations", action="store_true",
                        help="decode and map each dead letter with the current config and mapping and deliver "
                             "it to the destination that parked it, instead of producing it to its source topic")
    replay.add_argument("--dry-run", action="store_true", help="show what would be replayed; change nothing")
    replay.add_argument("--group", help="consumer group that tracks replay progress "
                                        "(default: <kafka.group_id>.dlq-replay)")
    replay.add_argument("--from-beginning", action="store_true",
                        help="read from the oldest dead letter, not from the replay group's progress (letters the "
                             "ledger holds are still never sent again)")
    replay.add_argument("--allow-duplicates", action="store_true",
                        help="replay to the source topic even records only some destinations dead-lettered "
                             "(the others would receive them a second time)")
    replay.add_argument("--timeout-s", type=float, default=120.0,
                        help="give up (and stop, committing what was accepted) when a produce or a delivery "
                             "takes longer than this (default 120)")

    ping = commands.add_parser(
        "ping", help="check the broker, the schema registry and each destination with the configured keys; "
                     "creates nothing unless --freshpaint-check event",
        description="Checks Kafka (metadata, topics exist), the schema registry (confluent framing) and each "
                    "enabled destination (DNS, TCP, TLS with certificate verification; Freshsuccess POST "
                    "/v1/ping and its keys with an empty body), prints one table whose CHECK column names each "
                    "check that ran, and exits 0 only if every check passed. Nothing is created in either "
                    "destination unless --freshpaint-check event is given.")
    ping.add_argument("--config", type=Path)
    ping.add_argument("--timeout-s", type=float, help="per check (default: kafka.startup_timeout_s for Kafka, "
                                                      "the destination's timeout_s for HTTP)")
    ping.add_argument("--freshpaint-check", choices=["connect", "event"], default="connect",
                      help="connect (default): DNS, TCP connect and TLS handshake with certificate verification; "
                           "sends no request and creates nothing, so it cannot prove the token. event: POST one "
                           "test event to /track (over the same DNS, TCP and verified TLS), which creates in the "
                           "token's Freshpaint environment the event 'usage-consumer ping' for the user "
                           "(distinct_id) 'usage-consumer-ping', routed to no destination ($options.integrations "
                           "{\"All\": false}), with $insert_id usage-consumer-ping-YYYYMMDD (UTC day: repeats "
                           "that day are de-duplicated)")
    ping.add_argument("--json", action="store_true", help="machine-readable output")


def main(argv: list[str] | None = None) -> int:
    args_list = sys.argv[1:] if argv is None else argv
    if args_list[:1] == ["emulate"]:
        from consumer.testing.emulators.runner import main as emulate

        return emulate(args_list[1:])
    args = _parser().parse_args(args_list)
    try:
        if args.command == "check":
            return _check(args.config)
        if args.command == "run":
            return _run(args.config, args.destination, args.shutdown_timeout_s)
        return _tool(args)
    except ConfigError as exc:
        _report(exc, args.debug, "configuration error")
        return 2
    except UsageConsumerError as exc:
        _report(exc, args.debug, "error")
        return 3
    except KafkaException as exc:  # the client refused its settings (e.g. a bad kafka.client_properties key)
        _report(exc, args.debug, "configuration error",
                f"the Kafka client refused its settings: {kafka_error_text(exc)}; check kafka.client_properties "
                "and the security settings")
        return 2
    except OSError as exc:  # e.g. the health port is taken, a file cannot be read
        _report(exc, args.debug, "error", f"{exc.strerror or exc}"
                + (f": {exc.filename}" if exc.filename else ""))
        return 3
    except KeyboardInterrupt:
        print("usage-consumer: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: one line, the traceback with --debug
        _report(exc, args.debug, "internal error",
                f"{type(exc).__name__}: {exc} (a bug; run with --debug for the traceback)")
        return 3


def _report(exc: BaseException, debug: bool, what: str, text: str | None = None) -> None:
    if debug:
        traceback.print_exc()
    print(f"usage-consumer: {what}: {exc if text is None else text}", file=sys.stderr)


def _tool(args: argparse.Namespace) -> int:
    """``status``, ``map``, ``dlq`` and ``ping``: settings from --config and the environment, quiet logs, one
    result."""
    from consumer.config import load_settings
    from consumer.observability.logs import configure_logging

    settings = load_settings(args.config)
    configure_logging(level="debug" if args.debug else "warning", fmt="console",
                      secrets=settings.secret_values())
    if args.command == "map":
        from consumer.tools.dryrun import run_map

        if args.samples and args.from_topic is not None:
            raise ConfigError("give sample files or --from-topic N, not both")
        if not args.samples and args.from_topic is None:
            raise ConfigError("nothing to explain: give sample files (JSON lines or Avro container; '-' for "
                              "stdin) or --from-topic N")
        return run_map(settings, files=args.samples, from_topic=args.from_topic, partition=args.partition,
                       offset=args.offset, as_json=args.json, out=sys.stdout, topic=args.topic, stream=args.stream)
    if args.command == "status":
        from consumer.tools.durations import parse_duration_s
        from consumer.tools.status import run_status

        return run_status(settings, as_json=args.json, watch_s=args.watch,
                          window_s=parse_duration_s(args.window, option="--window"), out=sys.stdout,
                          timeout_s=args.timeout_s)
    if args.command == "ping":
        from consumer.tools.ping import run_ping

        return run_ping(settings, timeout_s=args.timeout_s, freshpaint_check=args.freshpaint_check,
                        as_json=args.json, out=sys.stdout)
    from consumer.tools.dlq import Selection, run_inspect, run_replay

    selection = Selection.from_options(reasons=args.reason, destinations=args.destination, since=args.since,
                                       until=args.until, limit=args.limit)
    if args.dlq_command == "inspect":
        return run_inspect(settings, selection, full=args.full, as_json=args.json, out=sys.stdout,
                           include_replayed=args.include_replayed)
    return run_replay(settings, selection, to_destinations=args.to_destinations, dry_run=args.dry_run,
                      group=args.group, from_beginning=args.from_beginning,
                      allow_duplicates=args.allow_duplicates, timeout_s=args.timeout_s, as_json=args.json,
                      out=sys.stdout, progress=sys.stderr)


def _check(config: Path | None) -> int:
    from consumer.app.startup import prepare
    from consumer.config import load_settings
    from consumer.observability.logs import configure_logging

    configure_logging(level="warning")
    settings = load_settings(config)
    configure_logging(level="warning", secrets=settings.secret_values())
    settings.require_secrets()  # those the Kafka settings need; the destinations' keys are checked by run and ping
    prepared = prepare(settings)
    for stream in prepared.streams:
        lanes = [name for name in settings.destinations() if name in stream.mapping.functions]
        which = f"stream {stream.name!r} ({', '.join(stream.topics)}): " if settings.streams else ""
        schema = "written inline" if stream.schema_source == "inline" else f"of {stream.schema_source}"
        print(f"ok: {settings.source}: {which}mapping {stream.mapping_file} compiles against the reader schema "
              f"{schema} ({len(stream.mapping.rule_names)} rules; destinations with rules: "
              f"{', '.join(lanes) or 'none'})")
    return 0


def _run(config: Path | None, destinations: list[str] | None, shutdown_timeout_s: float | None) -> int:
    from consumer.app.service import Service
    from consumer.config import load_settings
    from consumer.observability.logs import configure_logging

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
