"""The Freshpaint sink's lean HTTP/1.1 client (``transport="http1"``, the default) against aiohttp's request path.

Every scenario runs through the sink twice against the same scripted raw server, once per transport, and the
two must agree on what the server received (byte for byte) and on what the sink made of each answer: retry
reasons (exception class names, which logs and metrics show), rejected events with status and body, fatal
errors, connections used. Then the client's own pool: its connection bound, cancellation, idle expiry.
"""

from __future__ import annotations

import asyncio
import gzip
import socket
import struct
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.errors import FatalError
from consumer.sinks import FreshpaintSink
from consumer.sinks import http1 as http1_module
from consumer.sinks.freshpaint import Transport
from consumer.sinks.http1 import Http1Client
from consumer.testing.fakes import events_batch
from tests.unit.test_sinks import NO_JITTER, TOKEN, FakeSleep, event, run

Action = tuple[Any, ...]
"""What the scripted server does with one request: ("raw", bytes), ("raw_close", bytes), ("close",),
("reset",) or ("hang",)."""


def ok(body: bytes = b"{}", extra: str = "") -> Action:
    return ("raw", f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{extra}Content-Length: {len(body)}\r\n\r\n"
            .encode() + body)


def status(code: int, body: bytes = b"", extra: str = "") -> Action:
    return ("raw", f"HTTP/1.1 {code} X\r\n{extra}Content-Length: {len(body)}\r\n\r\n".encode() + body)


def chunked(code: int, *parts: bytes, trailers: str = "") -> Action:
    chunks = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in parts)
    return ("raw", f"HTTP/1.1 {code} X\r\nTransfer-Encoding: chunked\r\n\r\n".encode() + chunks
            + b"0\r\n" + trailers.encode() + b"\r\n")


@dataclass
class Server:
    """A raw HTTP/1.1 server that answers each request with the next scripted action (then 200s)."""

    script: list[Action]
    requests: list[bytes] = field(default_factory=list)
    connections: int = 0
    _server: asyncio.Server | None = None
    _writers: list[asyncio.StreamWriter] = field(default_factory=list)
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        self._stopping.set()  # hanging handlers return (a cancelled handler task is logged as an error)
        await asyncio.sleep(0)
        for writer in self._writers:
            writer.close()
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length:")))
                self.requests.append(head + await reader.readexactly(length))
                action = self.script.pop(0) if self.script else ok()
                kind = action[0]
                if kind in ("raw", "raw_close"):
                    writer.write(action[1])
                    await writer.drain()
                if kind in ("raw_close", "close"):
                    writer.close()
                    return
                if kind == "reset":
                    sock = writer.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    writer.transport.abort()
                    return
                if kind == "hang":
                    await self._stopping.wait()
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            return


@dataclass
class Outcome:
    retries: list[str]
    rejected: list[tuple[int, int | None, str]]
    fatal: str | None
    requests: list[bytes]
    connections: int
    state: str


async def deliver(transport: Transport, script: list[Action], events: int = 1, *, max_in_flight: int = 1,
                  timeout_s: float = 5.0) -> Outcome:
    server = Server(list(script))
    url = await server.start()
    retries: list[str] = []
    sink = FreshpaintSink(base_url=url + "/v1", token=TOKEN, retry=NO_JITTER, sleep=FakeSleep(), transport=transport,
                          max_in_flight=max_in_flight, timeout_s=timeout_s,
                          on_retry=lambda reason, _delay: retries.append(reason))
    fatal = None
    rejected: list[tuple[int, int | None, str]] = []
    try:
        result = await sink.write(events_batch([event(i) for i in range(events)]))
        rejected = [(i, e.status, e.body) for i, e in result]
    except FatalError as exc:
        fatal = str(exc)
    finally:
        await sink.aclose()
        await server.stop()
    port = url.rsplit(":", 1)[1]
    requests = [r.replace(port.encode(), b"PORT") for r in server.requests]
    return Outcome(retries, rejected, fatal and fatal.replace(port, "PORT"), requests, server.connections, sink.state)


def both(script: list[Action], **kwargs: Any) -> tuple[Outcome, Outcome]:
    async def scenario() -> tuple[Outcome, Outcome]:
        return (await deliver("aiohttp", script, **kwargs), await deliver("http1", script, **kwargs))

    result: tuple[Outcome, Outcome] = run(scenario(), timeout_s=30)
    return result


SCENARIOS: dict[str, tuple[list[Action], int]] = {
    "200": ([ok()], 1),
    "keep-alive over several events": ([ok(), ok(), ok()], 3),
    "200 chunked": ([chunked(200, b"{", b"}")], 1),
    "200 with Connection: close": ([ok(extra="Connection: close\r\n"), ok()], 2),
    "HTTP/1.0, body until close": ([("raw_close", b"HTTP/1.0 200 OK\r\n\r\n{}"), ok()], 2),
    "HTTP/1.0 keep-alive": ([("raw", b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n"),
                             ok()], 2),
    "204": ([("raw", b"HTTP/1.1 204 No Content\r\n\r\n"), ok()], 2),
    "103 then 200": ([("raw", b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + ok()[1])], 1),
    "400 with body": ([status(400, b'{"error":"bad"}')], 1),
    "400 gzip body": ([status(400, gzip.compress(b"bad gzip " + TOKEN.encode()), "Content-Encoding: gzip\r\n")], 1),
    "422 deflate body": ([status(422, zlib.compress(b"bad deflate"), "Content-Encoding: deflate\r\n")], 1),
    "400 chunked with trailers": ([chunked(400, b"first ", b"second", trailers="X-T: 1\r\n")], 1),
    "413 then 200": ([status(413, b"too big"), ok()], 2),
    "429 Retry-After then 200": ([status(429, extra="Retry-After: 0\r\n"), ok()], 1),
    "503 then 200": ([status(503, b"busy"), ok()], 1),
    "401 then 200": ([status(401)], 1),
    "closed without an answer": ([("close",)], 1),
    "reset without an answer": ([("reset",)], 1),
    "truncated Content-Length body": ([("raw_close", b"HTTP/1.1 400 X\r\nContent-Length: 10\r\n\r\nabc")], 1),
    "truncated chunked body": ([("raw_close", b"HTTP/1.1 400 X\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab")], 1),
    "headers cut short": ([("raw_close", b"HTTP/1.1 200 OK\r\nContent-Le")], 1),
    "garbage status line": ([("raw_close", b"HTTQ/1.1 200 OK\r\n\r\n")], 1),
    "bad chunk size": ([("raw_close", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")], 1),
    "301": ([status(301, extra="Location: https://elsewhere/track\r\n")], 2),
    "404": ([status(404, b"not here")], 2),
    "405": ([status(405)], 1),
}


@pytest.mark.parametrize("name", SCENARIOS)
def test_http1_and_aiohttp_send_the_same_bytes_and_read_answers_alike(name: str) -> None:
    script, events = SCENARIOS[name]
    aio, lean = both(script, events=events)
    assert lean.requests == aio.requests
    assert lean.retries == aio.retries
    assert lean.rejected == aio.rejected
    assert (lean.fatal is None) == (aio.fatal is None)
    assert lean.fatal == aio.fatal
    assert lean.connections == aio.connections
    assert lean.state == aio.state


def test_http1_request_bytes_are_aiohttps() -> None:
    aio, lean = both([ok()])
    [request] = lean.requests
    assert request.startswith(b"POST /v1/track HTTP/1.1\r\nHost: 127.0.0.1:PORT\r\nContent-Type: application/json\r\n"
                              b"Accept: */*\r\nAccept-Encoding: gzip, deflate\r\nUser-Agent: Python/3.11 aiohttp/")
    assert TOKEN.encode() in request
    assert aio.requests == [request]


def test_http1_host_header_leaves_out_default_ports() -> None:
    for url, host in (("https://api.perfalytics.com/track", b"api.perfalytics.com"),
                      ("http://fp.example/track", b"fp.example"),
                      ("https://fp.example:8443/x/track", b"fp.example:8443"),
                      ("http://[::1]:8080/track", b"[::1]:8080")):
        client = Http1Client(url, headers={"Content-Type": "application/json"}, max_connections=1, timeout_s=1)
        head = client.request_head(7)
        assert b"\r\nHost: " + host + b"\r\n" in head
        assert head.endswith(b"\r\nContent-Length: 7\r\n\r\n")


def test_http1_and_aiohttp_time_out_alike() -> None:
    aio, lean = both([("hang",)], timeout_s=0.3)
    assert aio.retries == lean.retries == ["TimeoutError"]
    assert aio.connections == lean.connections == 2


def test_http1_refused_connection_is_aiohttps_connector_error() -> None:
    async def scenario() -> None:
        server = Server([])
        url = await server.start()
        await server.stop()
        client = Http1Client(url + "/track", headers={}, max_connections=1, timeout_s=1)
        with pytest.raises(aiohttp.ClientConnectorError) as info:
            await client.post(b"{}")
        assert str(info.value).startswith("Cannot connect to host 127.0.0.1:")
        await client.aclose()

    run(scenario())


# --- the pool ------------------------------------------------------------------------------------------------


async def with_server(script: list[Action], test: Callable[[Server, str], Awaitable[None]]) -> None:
    server = Server(script)
    url = await server.start()
    try:
        await test(server, url + "/track")
    finally:
        await server.stop()


def test_http1_never_opens_more_than_max_connections() -> None:
    async def test(server: Server, url: str) -> None:
        client = Http1Client(url, headers={}, max_connections=3, timeout_s=5)
        answers = await asyncio.gather(*(client.post(b"{}") for _ in range(20)))
        assert [a[0] for a in answers] == [200] * 20
        assert server.connections == 3
        await client.aclose()

    run(with_server([], test))


def test_http1_waiting_for_a_connection_counts_against_the_timeout() -> None:
    async def test(server: Server, url: str) -> None:
        client = Http1Client(url, headers={}, max_connections=1, timeout_s=5)
        hung = asyncio.create_task(client.post(b"{}"))  # holds the one connection
        await asyncio.sleep(0.05)
        client._timeout_s = 0.2
        with pytest.raises(aiohttp.ConnectionTimeoutError):
            await client.post(b"{}")
        hung.cancel()
        with pytest.raises(asyncio.CancelledError):
            await hung
        assert (await client.post(b"{}"))[0] == 200  # the cancelled request freed its slot
        await client.aclose()

    run(with_server([("hang",)], test))


def test_http1_cancelled_request_closes_its_connection_and_frees_the_slot() -> None:
    async def test(server: Server, url: str) -> None:
        client = Http1Client(url, headers={}, max_connections=1, timeout_s=5)
        task = asyncio.create_task(client.post(b"{}"))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert (await client.post(b"{}"))[0] == 200
        assert server.connections == 2  # the cancelled request's answer could still arrive: never reused
        await client.aclose()

    run(with_server([("hang",)], test))


def test_http1_server_closing_an_idle_connection_is_not_an_error() -> None:
    async def test(server: Server, url: str) -> None:
        client = Http1Client(url, headers={}, max_connections=1, timeout_s=5)
        assert (await client.post(b"{}"))[0] == 200
        for writer in server._writers:
            writer.close()
        await asyncio.sleep(0.05)
        assert (await client.post(b"{}"))[0] == 200
        assert server.connections == 2
        await client.aclose()

    run(with_server([], test))


def test_http1_idle_connections_expire(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http1_module, "KEEPALIVE_TIMEOUT_S", 0.05)

    async def test(server: Server, url: str) -> None:
        client = Http1Client(url, headers={}, max_connections=2, timeout_s=5)
        await asyncio.gather(client.post(b"{}"), client.post(b"{}"))
        assert len(client._idle) == 2
        await asyncio.sleep(0.2)  # the sweeper closes both
        assert client._idle == []
        assert (await client.post(b"{}"))[0] == 200
        assert server.connections == 3
        await client.aclose()

    run(with_server([], test))


def test_http1_answer_nobody_asked_for_closes_the_connection() -> None:
    async def test(server: Server, url: str) -> None:
        client = Http1Client(url, headers={}, max_connections=1, timeout_s=5)
        assert (await client.post(b"{}"))[0] == 200  # then a second, unrequested answer arrives
        await asyncio.sleep(0.05)
        assert (await client.post(b"{}"))[0] == 200
        assert server.connections == 2
        await client.aclose()

    run(with_server([("raw", ok()[1] + ok()[1])], test))


def test_http1_large_answers_split_across_reads() -> None:
    body = b"x" * 300_000

    async def test(server: Server, url: str) -> None:
        client = Http1Client(url, headers={}, max_connections=1, timeout_s=5)
        assert await client.post(b"{}") == (400, {"content-length": str(len(body))}, body)
        parts = [b"y" * 70_000] * 3
        answer = await client.post(b"{}")
        assert answer[0] == 400
        assert answer[2] == b"".join(parts)
        await client.aclose()

    run(with_server([("raw", b"HTTP/1.1 400 X\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)),
                     chunked(400, *([b"y" * 70_000] * 3))], test))


def test_http1_whole_second_deadlines_time_out_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the ceil threshold (5 s; lowered here) requests due in the same second share one timer."""
    monkeypatch.setattr(http1_module, "_CEIL_THRESHOLD_S", 0.1)

    async def test(server: Server, url: str) -> None:
        client = Http1Client(url, headers={}, max_connections=4, timeout_s=0.3)
        loop = asyncio.get_running_loop()
        started = loop.time()
        results = await asyncio.gather(client.post(b"{}"), client.post(b"{}"), client.post(b"{}"),
                                       return_exceptions=True)
        assert sorted(type(r).__name__ for r in results) == ["TimeoutError", "TimeoutError", "tuple"]
        assert 0.3 <= loop.time() - started <= 1.5
        assert len(client._due) <= 1  # the answered request left its set; the timer fired for the rest
        assert (await client.post(b"{}"))[0] == 200
        await client.aclose()

    run(with_server([("hang",), ("hang",)], test))


def test_concurrent_deliveries_finish_oldest_first() -> None:
    """Each worker keeps its in-flight slot for its batch's next event, so the batch submitted first is served
    first instead of every batch advancing a request at a time."""

    async def scenario() -> list[str]:
        server = Server([])
        url = await server.start()
        sink = FreshpaintSink(base_url=url, token=TOKEN, retry=NO_JITTER, sleep=FakeSleep(), max_in_flight=2)
        try:
            first = sink.write(events_batch([event(i) for i in range(6)]))
            second = sink.write(events_batch([event(i) for i in range(10, 16)]))
            assert list(await asyncio.gather(first, second)) == [[], []]
        finally:
            await sink.aclose()
            await server.stop()
        return [r.split(b'"distinct_id":"')[1].split(b'"')[0].decode() for r in server.requests]

    order = run(scenario())
    assert sorted(order[:6]) == [f"user-{i}" for i in range(6)]
    assert sorted(order[6:]) == [f"user-{i}" for i in range(10, 16)]


def test_http1_aclose_drops_requests_in_flight_and_refuses_new_ones() -> None:
    """As aiohttp's closed session: the retry after the drop cannot open a connection behind close's back."""

    async def test(server: Server, url: str) -> None:
        client = Http1Client(url, headers={}, max_connections=2, timeout_s=5)
        assert (await client.post(b"{}"))[0] == 200
        hung = asyncio.create_task(client.post(b"{}"))
        await asyncio.sleep(0.05)
        await client.aclose()
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await hung
        with pytest.raises(RuntimeError, match="closed"):
            await client.post(b"{}")
        assert client._connections == set()
        assert server.connections == 1  # the hung request went out on the first, kept-alive connection

    run(with_server([ok(), ("hang",)], test))


@settings(max_examples=200, deadline=None)
@given(body=st.binary(max_size=300), chunks=st.lists(st.integers(1, 64), max_size=6),
       framing=st.sampled_from(["length", "chunked", "eof"]), code=st.sampled_from([200, 400, 429, 503]),
       cuts=st.lists(st.integers(0, 600), max_size=8), interim=st.booleans())
def test_http1_parser_reads_an_answer_however_it_is_split(body: bytes, chunks: list[int], framing: str, code: int,
                                                          cuts: list[int], interim: bool) -> None:
    if framing == "chunked":
        parts, rest = [], body
        for size in chunks:
            parts.append(rest[:size])
            rest = rest[size:]
        parts.append(rest)
        payload = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts if p) + b"0\r\n\r\n"
        head = b"Transfer-Encoding: chunked\r\n"
    elif framing == "length":
        payload, head = body, b"Content-Length: %d\r\n" % len(body)
    else:
        payload, head = body, b"Connection: close\r\n"
    raw = (b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n" if interim else b"") + (
        b"HTTP/1.1 %d Whatever\r\nRetry-After:  7 \r\nretry-after: 9\r\n%s\r\n%s" % (code, head, payload))

    async def scenario() -> tuple[int, dict[str, str], bytes]:
        client = Http1Client("http://127.0.0.1:1/track", headers={}, max_connections=1, timeout_s=5)
        connection = http1_module._Connection(client)
        waiter = asyncio.get_running_loop().create_future()
        connection.start(waiter)
        previous = 0
        for cut in sorted({c for c in cuts if c < len(raw)}):
            connection.data_received(raw[previous:cut])
            previous = cut
        connection.data_received(raw[previous:])
        if framing == "eof":
            assert not waiter.done()
            connection.connection_lost(None)
        return await waiter  # type: ignore[no-any-return]

    status, headers, content = run(scenario())
    assert (status, content) == (code, body)
    assert headers["retry-after"] == "7"  # the first value, trimmed, under a lower-case name
