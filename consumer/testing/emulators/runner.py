"""Running the emulators: in-process for tests (:class:`Emulators`) or as ``usage-consumer emulate`` (:func:`main`).

Both servers share one asyncio loop. In-process, that loop runs in a daemon thread so a synchronous
test can drive the consumer and inspect the emulators at the same time; the CLI runs it in the main
thread and stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import ssl
import sys
import threading
from concurrent.futures import Future
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Unpack

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler

from consumer.testing.emulators.common import (
    DEFAULT_MAX_RECORDED_REQUESTS,
    MAX_BODY_BYTES,
    BaseEmulator,
    EmulatorOptions,
    write_ready_file,
)
from consumer.testing.emulators.freshpaint import FreshpaintEmulator
from consumer.testing.emulators.freshsuccess import FreshsuccessEmulator

START_TIMEOUT_S: Final = 10.0
STOP_TIMEOUT_S: Final = 10.0
SHUTDOWN_GRACE_S: Final = 1.0
ENV_AUTH_KEY: Final = "FRESHSUCCESS_AUTH_KEY"
ENV_API_KEY: Final = "FRESHSUCCESS_API_KEY"
ENV_TOKEN: Final = "FRESHPAINT_TOKEN"


def _destination_emulators(*, auth_key: str, api_key: str, token: str, freshpaint_bad_token_status: int,
                           **options: Unpack[EmulatorOptions]) -> tuple[FreshsuccessEmulator, FreshpaintEmulator]:
    """Both destination emulators with the same options, as the in-process pair and the CLI both serve them."""
    return (FreshsuccessEmulator(auth_key=auth_key, api_key=api_key, **options),
            FreshpaintEmulator(token=token, bad_token_status=freshpaint_bad_token_status, **options))


def server_tls_context(certfile: Path, keyfile: Path | None = None) -> ssl.SSLContext:
    """A TLS server context serving ``certfile`` (PEM; with its key, or the key in ``keyfile``)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certfile, keyfile)
    return context


class _TrackedServer(web.Server):
    """A ``web.Server`` that remembers each open connection's transport until it is lost.

    aiohttp's ``Server.shutdown`` closes the connections it holds when it starts, then forgets them all: a
    connection accepted just before the site stopped, whose ``connection_made`` comes while that shutdown
    waits, is never closed. Its handler task, idle on keep-alive, is then only cancelled when the loop
    ends (which does not close the transport), and the garbage-collected transport and socket raise
    ``ResourceWarning``. :meth:`EmulatorServers.stop` aborts what is left here.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.open_transports: dict[RequestHandler, asyncio.Transport] = {}

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        self.open_transports[handler] = transport

    def connection_lost(self, handler: RequestHandler, exc: BaseException | None = None) -> None:
        self.open_transports.pop(handler, None)
        super().connection_lost(handler, exc)


class EmulatorServers:
    """Serves each emulator on its own port of ``host``, on the running event loop; over HTTPS when given
    an ``ssl_context``."""

    def __init__(self, host: str, emulators: list[tuple[BaseEmulator, int]], *,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self._host = host
        self._emulators = emulators
        self._ssl_context = ssl_context
        self._runners: list[web.ServerRunner] = []
        self._servers: list[_TrackedServer] = []

    async def start(self) -> list[str]:
        """Start listening; return each emulator's base URL (real port when 0 was asked), in order."""
        loop = asyncio.get_running_loop()

        def make_request(message: RawRequestMessage, payload: StreamReader, protocol: RequestHandler,
                         writer: AbstractStreamWriter, task: asyncio.Task[None]) -> web.BaseRequest:
            # The default 1 MiB cap would refuse a full-size plain-JSON Freshsuccess batch.
            return web.BaseRequest(message, payload, protocol, writer, task, loop,
                                   client_max_size=MAX_BODY_BYTES)

        urls: list[str] = []
        try:
            for emulator, port in self._emulators:
                # auto_decompress=False: the emulators record the body exactly as sent and decode it
                # themselves; access_log=None keeps the per-request path lean.
                server = _TrackedServer(emulator.handle, request_factory=make_request, access_log=None,
                                        auto_decompress=False)
                self._servers.append(server)
                runner = web.ServerRunner(server, shutdown_timeout=SHUTDOWN_GRACE_S)
                await runner.setup()
                self._runners.append(runner)
                site = web.TCPSite(runner, self._host, port, backlog=1024, ssl_context=self._ssl_context)
                await site.start()
                bound_port = runner.addresses[0][1]
                scheme = "https" if self._ssl_context is not None else "http"
                urls.append(f"{scheme}://{self._host}:{bound_port}")
        except BaseException:
            await self.stop()
            raise
        return urls

    async def stop(self) -> None:
        """Stop listening, close open connections and flush the record files."""
        runners, self._runners = self._runners, []
        servers, self._servers = self._servers, []
        for runner in reversed(runners):
            await runner.cleanup()
        # Connections aiohttp's shutdown missed (see _TrackedServer): abort them, and let connection_lost
        # close their sockets on the next turn of the loop, before the loop itself is closed.
        leftover = [transport for server in servers for transport in server.open_transports.values()]
        for server in servers:
            server.open_transports.clear()
        for transport in leftover:
            transport.abort()
        if leftover:
            await asyncio.sleep(0)
        for emulator, _ in self._emulators:
            emulator.close()


class Emulators:
    """Both destination emulators on loopback, for tests; a context manager.

    ``max_recorded_requests`` bounds ``requests()`` (bodies included) and ``max_kept_events`` bounds
    ``events()`` and ``dropped()``; counters in ``stats()`` are always exact. With ``ssl_certfile`` (PEM,
    plus ``ssl_keyfile`` unless the key is in it) both serve HTTPS.
    """

    def __init__(self, *, host: str = "127.0.0.1", freshsuccess_port: int = 0, freshpaint_port: int = 0,
                 auth_key: str, api_key: str, token: str, record_dir: Path | None = None,
                 freshpaint_bad_token_status: int = 401,
                 max_recorded_requests: int | None = DEFAULT_MAX_RECORDED_REQUESTS,
                 max_kept_events: int | None = None, ssl_certfile: Path | None = None,
                 ssl_keyfile: Path | None = None) -> None:
        self._host = host
        self._ssl_context = server_tls_context(ssl_certfile, ssl_keyfile) if ssl_certfile is not None else None
        self._ports = (freshsuccess_port, freshpaint_port)
        self.freshsuccess, self.freshpaint = _destination_emulators(
            auth_key=auth_key, api_key=api_key, token=token, freshpaint_bad_token_status=freshpaint_bad_token_status,
            record_dir=record_dir, max_recorded_requests=max_recorded_requests, max_kept_events=max_kept_events)
        self.freshsuccess_url = ""
        self.freshpaint_url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._servers: EmulatorServers | None = None

    def __repr__(self) -> str:
        return f"Emulators(freshsuccess_url={self.freshsuccess_url!r}, freshpaint_url={self.freshpaint_url!r})"

    def start(self) -> Emulators:
        if self._loop is not None:
            raise RuntimeError("emulators already started")
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=_run_loop, args=(loop,), name="emulators", daemon=True)
        thread.start()
        self._loop, self._thread = loop, thread
        servers = EmulatorServers(self._host, [(self.freshsuccess, self._ports[0]),
                                               (self.freshpaint, self._ports[1])], ssl_context=self._ssl_context)
        try:
            urls = _call(loop, servers.start(), START_TIMEOUT_S)
        except BaseException:
            self._halt_loop()
            raise
        self._servers = servers
        self.freshsuccess_url, self.freshpaint_url = urls
        return self

    def stop(self) -> None:
        """Stop both servers (flushing record files) and the loop thread; safe to call twice."""
        if self._loop is None:
            return
        try:
            if self._servers is not None:
                _call(self._loop, self._servers.stop(), STOP_TIMEOUT_S)
        finally:
            self._servers = None
            self._halt_loop()

    def _halt_loop(self) -> None:
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(STOP_TIMEOUT_S)

    def __enter__(self) -> Emulators:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        # Handlers still sleeping in a latency fault outlive the servers: cancel them before closing.
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def _call(loop: asyncio.AbstractEventLoop, coro: Any, timeout_s: float) -> Any:
    future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, loop)
    return future.result(timeout_s)


# ---------------------------------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="usage-consumer emulate",
        description="Run local HTTP emulators of the Freshsuccess Event API and the Freshpaint /track API. "
                    f"Keys come from {ENV_AUTH_KEY}, {ENV_API_KEY} and {ENV_TOKEN}.")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--freshsuccess-port", type=_non_negative_int, default=0, help="0 picks a free port (default)")
    parser.add_argument("--freshpaint-port", type=_non_negative_int, default=0, help="0 picks a free port (default)")
    parser.add_argument("--record-dir", type=Path, default=None,
                        help="append accepted events to DIR/freshsuccess.jsonl and DIR/freshpaint.jsonl")
    parser.add_argument("--ready-file", type=Path, default=None,
                        help='write {"freshsuccess_url", "freshpaint_url", "pid"} as JSON here once listening')
    parser.add_argument("--freshpaint-bad-token-status", type=int, default=401,
                        help="status answered for a wrong Freshpaint token (default 401)")
    parser.add_argument("--max-kept-events", type=_non_negative_int, default=1_000_000,
                        help="events kept in memory per emulator for GET /_emulator/events (default 1000000; "
                             "counters stay exact)")
    parser.add_argument("--max-recorded-requests", type=_non_negative_int, default=0,
                        help="requests (with bodies) kept in memory per emulator (default 0)")
    parser.add_argument("--ssl-certfile", type=Path, default=None,
                        help="serve HTTPS with this PEM certificate (chain); the key too unless --ssl-keyfile")
    parser.add_argument("--ssl-keyfile", type=Path, default=None, help="PEM private key for --ssl-certfile")
    return parser


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


async def _serve(args: argparse.Namespace, auth_key: str, api_key: str, token: str,
                 context: ssl.SSLContext | None = None) -> None:
    freshsuccess, freshpaint = _destination_emulators(
        auth_key=auth_key, api_key=api_key, token=token, freshpaint_bad_token_status=args.freshpaint_bad_token_status,
        record_dir=args.record_dir, max_recorded_requests=args.max_recorded_requests,
        max_kept_events=args.max_kept_events)
    servers = EmulatorServers(args.host, [(freshsuccess, args.freshsuccess_port),
                                          (freshpaint, args.freshpaint_port)], ssl_context=context)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    fs_url, fp_url = await servers.start()
    try:
        if args.ready_file is not None:
            write_ready_file(args.ready_file, {"freshsuccess_url": fs_url, "freshpaint_url": fp_url,
                                               "pid": os.getpid()})
        print(f"emulators ready: freshsuccess {fs_url} (events at /v1/<authKey>/<apiKey>), "
              f"freshpaint {fp_url}/track, control API under /_emulator/", flush=True)
        await stop.wait()
    finally:
        await servers.stop()
        if args.ready_file is not None:
            args.ready_file.unlink(missing_ok=True)  # a stale file would point pollers at dead ports
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    for emulator in (freshsuccess, freshpaint):
        stats = emulator.stats()
        print(f"{emulator.name}: " + ", ".join(f"{key}={value}" for key, value in stats.items()), flush=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``usage-consumer emulate``; returns the process exit code."""
    args = _parser().parse_args(argv)
    env = {name: os.environ.get(name, "") for name in (ENV_AUTH_KEY, ENV_API_KEY, ENV_TOKEN)}
    missing = [name for name, value in env.items() if not value]
    if missing:
        print(f"usage-consumer emulate: set {', '.join(missing)} in the environment (the keys the "
              "emulators accept)", file=sys.stderr)
        return 2
    if args.ssl_keyfile is not None and args.ssl_certfile is None:
        print("usage-consumer emulate: --ssl-keyfile needs --ssl-certfile", file=sys.stderr)
        return 2
    context = None
    if args.ssl_certfile is not None:
        try:
            context = server_tls_context(args.ssl_certfile, args.ssl_keyfile)
        except OSError as exc:  # ssl.SSLError included
            print(f"usage-consumer emulate: cannot serve HTTPS with {args.ssl_certfile}: "
                  f"{exc.strerror or exc}", file=sys.stderr)
            return 2
    try:
        asyncio.run(_serve(args, env[ENV_AUTH_KEY], env[ENV_API_KEY], env[ENV_TOKEN], context))
    except OSError as exc:
        print(f"usage-consumer emulate: could not listen on {args.host}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0
