"""A lean HTTP/1.1 client for one endpoint: ``POST`` a body on kept-alive connections, read the answer.

Freshpaint takes one event per request, so the client's CPU per request is that sink's whole budget.
aiohttp's request path (session, request and response objects, payload writers, stream readers, timers)
costs ~120-140 CPU-µs per request on this project's machines whatever options it is given; this client
does only what ``POST /track`` needs and costs a fraction of that (docs/performance.md, "Freshpaint per
request"):

- the request head is built once; each request is one ``transport.write`` of head, ``Content-Length``
  and body. The bytes are those aiohttp sends for the same call (same headers, same order, its
  ``User-Agent``), so the destination sees no difference;
- the answer is parsed in ``data_received`` (status line, headers, a ``Content-Length``, chunked or
  close-delimited body, 1xx answers skipped, ``gzip``/``deflate`` bodies decoded as advertised by
  ``Accept-Encoding``);
- connections are reused last-in first-out, at most ``max_connections`` of them, and closed after
  ``KEEPALIVE_TIMEOUT_S`` idle (aiohttp's default);
- failures raise the aiohttp exceptions aiohttp raises for the same failure (``ClientConnectorError``,
  ``ServerDisconnectedError``, ``ClientPayloadError``, ``ClientResponseError``, ``TimeoutError`` ...), so
  the sink retries exactly the same things and its logs and metrics name them the same way;
- one ``timeout_s`` bounds each request from waiting for a connection to the last byte of the answer,
  rounded up to a whole second past 5 s as aiohttp's ``ClientTimeout(total=...)`` does (so the requests
  due in the same second share one timer).

No redirects, cookies, proxies or request streaming: the sink needs none of them (``trust_env`` is off in
its aiohttp session too).
"""

from __future__ import annotations

import asyncio
import math
import socket
import ssl
import zlib
from collections import deque
from collections.abc import Mapping
from typing import Final

import aiohttp
import aiohttp.http
import yarl
from aiohttp.client_reqrep import ConnectionKey
from multidict import CIMultiDict, CIMultiDictProxy

from consumer.sinks.retry import Answer

__all__ = ["KEEPALIVE_TIMEOUT_S", "Http1Client"]

KEEPALIVE_TIMEOUT_S: Final = 15.0
"""An idle connection older than this is closed rather than reused (aiohttp's ``keepalive_timeout``)."""
ACCEPT_ENCODING: Final = "gzip, deflate"
"""What aiohttp advertises without brotli or zstd installed, and exactly what this client decodes."""
USER_AGENT: Final = aiohttp.http.SERVER_SOFTWARE
CLOSE_TIMEOUT_S: Final = 1.0
"""How long :meth:`Http1Client.aclose` waits for TLS connections to finish their shutdown before aborting them."""
MAX_HEAD_BYTES: Final = 64 * 1024
"""Status line plus headers of one answer; beyond this the answer is refused as malformed."""
MAX_LINE_BYTES: Final = 8190
"""One header line or chunk-size line (aiohttp's ``max_line_size``/``max_field_size``)."""
_CEIL_THRESHOLD_S: Final = 5.0
_NO_BODY_STATUSES: Final = frozenset({204, 304})
_HEX: Final = frozenset(b"0123456789abcdefABCDEF")

# Parser states of a connection.
_IDLE, _HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _TRAILERS, _UNTIL_EOF, _BROKEN = range(8)


class _Malformed(Exception):
    """An answer this client cannot read: raised inside the parser, turned into ``ClientResponseError``."""


class _Connection(asyncio.Protocol):
    """One kept-alive connection; parses the answer to the one request in flight on it."""

    def __init__(self, client: Http1Client) -> None:
        self.client = client
        self.counted = True
        """Still counted against the client's ``max_connections`` (until closed or lost)."""
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[Answer] | None = None
        self.alive = True
        self.reusable = True
        self.idle_since = 0.0
        self._state = _IDLE
        self._buffer = b""
        self._status = 0
        self._headers: dict[str, str] = {}
        self._remaining = 0
        self._parts: list[bytes] = []
        self._encoding = ""

    # -------------------------------------------------------------------------------- asyncio protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self._state == _IDLE or self._state == _BROKEN:
            self.reusable = False  # bytes nobody asked for: this connection's framing cannot be trusted
            if self.transport is not None:
                self.transport.close()
            return
        self._buffer = self._buffer + data if self._buffer else data
        try:
            self._parse()
        except _Malformed as exc:
            self._fail(self.client.malformed(str(exc)))

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost finishes the answer or reports the drop

    def connection_lost(self, exc: Exception | None) -> None:
        self.alive = False
        self.reusable = False
        self.client.lost(self)
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        state = self._state
        if state == _UNTIL_EOF:
            self._finish(self._buffer)
            return
        if state in (_LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _TRAILERS):
            if state == _LENGTH:
                detail = ("ContentLengthError: 400, message='Not enough data to satisfy content length header "
                          f"(received {len(self._buffer)} of {self._remaining} bytes).'")
            else:
                detail = "TransferEncodingError: 400, message='Not enough data to satisfy transfer length header.'"
            message = f"Response payload is not completed: <{detail}>"
            if exc is not None:
                message = f"{message}. {exc!r}"
            self._fail(aiohttp.ClientPayloadError(message))
        elif exc is None:
            self._fail(aiohttp.ServerDisconnectedError())
        elif isinstance(exc, OSError):
            self._fail(aiohttp.ClientOSError(*exc.args))
        else:
            self._fail(aiohttp.ClientConnectionError(f"Connection lost: {exc!s}"))

    # -------------------------------------------------------------------------------------------- parsing

    def start(self, waiter: asyncio.Future[Answer]) -> None:
        self.waiter = waiter
        self._state = _HEAD

    def _parse(self) -> None:
        while True:
            state = self._state
            buffer = self._buffer
            if state == _HEAD:
                end = buffer.find(b"\r\n\r\n")
                if end < 0:
                    if len(buffer) > MAX_HEAD_BYTES:
                        raise _Malformed("Got more than the allowed bytes of status line and headers")
                    return
                self._buffer = buffer[end + 4:]
                self._head(buffer[:end])
            elif state == _LENGTH:
                if len(buffer) < self._remaining:
                    return
                body, self._buffer = buffer[:self._remaining], buffer[self._remaining:]
                self._finish(body)
                return
            elif state == _CHUNK_SIZE:
                end = buffer.find(b"\r\n")
                if end < 0:
                    if len(buffer) > MAX_LINE_BYTES:
                        raise _Malformed("Chunk size line too long")
                    return
                text = buffer[:end].split(b";", 1)[0].strip(b" \t")
                if not text or not _HEX.issuperset(text):
                    raise _Malformed(f"Invalid chunk size: {buffer[:min(end, 40)]!r}")
                self._buffer = buffer[end + 2:]
                self._remaining = int(text, 16)
                self._state = _CHUNK_DATA if self._remaining else _TRAILERS
            elif state == _CHUNK_DATA:
                size = self._remaining
                if len(buffer) < size + 2:
                    return
                if buffer[size:size + 2] != b"\r\n":
                    raise _Malformed("Chunk data not followed by CRLF")
                self._parts.append(buffer[:size])
                self._buffer = buffer[size + 2:]
                self._state = _CHUNK_SIZE
            elif state == _TRAILERS:
                if buffer.startswith(b"\r\n"):
                    self._buffer = buffer[2:]
                else:
                    end = buffer.find(b"\r\n\r\n")
                    if end < 0:
                        if len(buffer) > MAX_HEAD_BYTES:
                            raise _Malformed("Got more than the allowed bytes of trailers")
                        return
                    self._buffer = buffer[end + 4:]
                body = b"".join(self._parts)
                self._parts = []
                self._finish(body)
                return
            else:  # _UNTIL_EOF: the body is whatever arrives before the server closes
                return

    def _head(self, head: bytes) -> None:
        """Read one answer's status line and headers; choose how its body is framed."""
        lines = head.decode("utf-8", "surrogateescape").split("\r\n")  # names are ASCII; values as aiohttp reads them
        status_line = lines[0]
        version = status_line[:9]
        code = status_line[9:12]
        if (version not in ("HTTP/1.1 ", "HTTP/1.0 ") or len(code) < 3 or not code.isdigit() or not code.isascii()
                or status_line[12:13] not in ("", " ")):
            raise _Malformed(f"Invalid status line: {head[:40]!r}")
        status = int(code)
        if status < 100:
            raise _Malformed(f"Invalid status code: {status}")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if len(line) > MAX_LINE_BYTES:
                raise _Malformed("Got more than 8190 bytes when reading a header line")
            name, colon, value = line.partition(":")
            if not colon or not name or name[0] in " \t" or name[-1] in " \t":
                raise _Malformed(f"Invalid header line: {line[:40]!r}")
            key = name.lower()
            text = value.strip(" \t")
            if key in headers:
                if key == "content-length" and headers[key] != text:
                    raise _Malformed("Conflicting Content-Length headers")
                if key in ("transfer-encoding", "connection", "content-encoding"):
                    headers[key] = f"{headers[key]}, {text}"
                continue  # the first value wins, as aiohttp's ``headers.get`` reads it
            headers[key] = text
        if 100 <= status < 200 and status != 101:
            return  # an interim answer (100 Continue, 103 Early Hints): the real one follows
        connection = headers.get("connection", "").lower()
        if (version == "HTTP/1.0 " and "keep-alive" not in connection) or "close" in connection:
            self.reusable = False
        self._status = status
        self._headers = headers
        self._encoding = headers.get("content-encoding", "").strip().lower()
        transfer = headers.get("transfer-encoding")
        length = headers.get("content-length")
        if status in _NO_BODY_STATUSES or status < 200:
            if status == 101:
                self.reusable = False  # switched to another protocol: nothing more of HTTP here
            self._finish(b"")
        elif transfer is not None:
            if transfer.rsplit(",", 1)[-1].strip().lower() != "chunked":
                raise _Malformed(f"Unsupported Transfer-Encoding: {transfer[:40]!r}")
            if length is not None:
                self.reusable = False  # both framings given: read as chunked, then trust nothing more
            self._parts = []
            self._state = _CHUNK_SIZE
        elif length is not None:
            if not length.isdigit() or not length.isascii():
                raise _Malformed(f"Invalid Content-Length: {length[:40]!r}")
            self._remaining = int(length)
            self._state = _LENGTH
        else:
            self.reusable = False
            self._state = _UNTIL_EOF

    def _finish(self, body: bytes) -> None:
        self._state = _IDLE
        if self._buffer:  # more than the answer: an extra answer or garbage, never reuse
            self.reusable = False
            self._buffer = b""
        if body and self._encoding in ("gzip", "deflate", "x-gzip"):
            try:
                body = _decompress(body, self._encoding)
            except zlib.error as exc:
                self._fail(aiohttp.ClientPayloadError(f"Can not decode content-encoding: {self._encoding}: {exc}"))
                return
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result((self._status, self._headers, body))

    def _fail(self, exc: BaseException) -> None:
        self._state = _BROKEN
        self.reusable = False
        self._buffer = b""
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        if self.transport is not None:
            self.transport.close()

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.abort()


def _decompress(body: bytes, encoding: str) -> bytes:
    if encoding == "deflate" and body[0] & 0x0F != 8:  # raw deflate without the zlib wrapper
        wbits = -zlib.MAX_WBITS
    else:
        wbits = zlib.MAX_WBITS | (16 if encoding != "deflate" else 0)
    decoder = zlib.decompressobj(wbits)
    out = decoder.decompress(body) + decoder.flush()
    if not decoder.eof:
        raise zlib.error("truncated compressed body")
    return out


def _expire(waiter: asyncio.Future[Answer]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class Http1Client:
    """``POST`` bodies to one URL over at most ``max_connections`` kept-alive HTTP/1.1 connections.

    ``headers`` come right after ``Host`` in the request head (as aiohttp orders them), then ``Accept``,
    ``Accept-Encoding``, ``User-Agent`` and ``Content-Length``. ``ssl_context`` is used for ``https``
    URLs (None: the default trust store, with ALPN ``http/1.1`` as aiohttp sets it). Bound to the event
    loop of its first request.
    """

    def __init__(self, url: str, *, headers: Mapping[str, str], max_connections: int, timeout_s: float,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        parsed = yarl.URL(url)
        if parsed.scheme not in ("http", "https") or not parsed.raw_host:
            raise ValueError("an http:// or https:// URL with a host is required")
        secure = parsed.scheme == "https"
        self._url = parsed
        self._host = parsed.raw_host
        self._port: int = parsed.port or (443 if secure else 80)
        self._timeout_s = timeout_s
        self._max_connections = max_connections
        self._ssl: ssl.SSLContext | None = None
        if secure:
            self._ssl = ssl_context if ssl_context is not None else _default_context()
        self._key = ConnectionKey(parsed.raw_host, parsed.port, secure,
                                  ssl_context if ssl_context is not None else True, None, None, None)
        lines = [f"POST {parsed.raw_path_qs} HTTP/1.1", f"Host: {parsed.host_port_subcomponent}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        lines += ["Accept: */*", f"Accept-Encoding: {ACCEPT_ENCODING}", f"User-Agent: {USER_AGENT}"]
        self._head = ("\r\n".join(lines) + "\r\nContent-Length: ").encode("latin-1")
        request_headers = CIMultiDict({"Host": parsed.host_port_subcomponent or "", **headers,
                                       "Accept": "*/*", "Accept-Encoding": ACCEPT_ENCODING,
                                       "User-Agent": USER_AGENT})
        self._request_info = aiohttp.RequestInfo(parsed, "POST", CIMultiDictProxy(request_headers), parsed)
        self._idle: list[_Connection] = []
        self._connections: set[_Connection] = set()
        self._open = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._sweeper: asyncio.TimerHandle | None = None
        self._due: dict[float, set[asyncio.Future[Answer]]] = {}
        """Requests in flight by deadline (whole seconds when ``timeout_s`` > 5 s), each set with one timer."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    @property
    def closed(self) -> bool:
        """:meth:`aclose` was called: no more requests."""
        return self._closed

    def request_head(self, content_length: int) -> bytes:
        """The bytes that precede a body of ``content_length`` bytes (for tests and previews)."""
        return self._head + str(content_length).encode("ascii") + b"\r\n\r\n"

    async def post(self, body: bytes) -> Answer:
        """Send ``body``; returns the answer's status, headers (lower-case names) and decoded body."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        if self._closed:
            raise RuntimeError("Session is closed")
        timeout_s = self._timeout_s
        now = loop.time()
        deadline = now + timeout_s
        if timeout_s > _CEIL_THRESHOLD_S:
            deadline = math.ceil(deadline)
        connection = self._take_idle(now)
        if connection is None:
            connection = await self._connect(deadline)
        transport = connection.transport
        assert transport is not None
        if not connection.alive:  # closed by the server right after it accepted the connection
            self.forget(connection)
            raise aiohttp.ServerDisconnectedError()
        waiter: asyncio.Future[Answer] = loop.create_future()
        connection.start(waiter)
        due: set[asyncio.Future[Answer]] | None = None
        timer: asyncio.TimerHandle | None = None
        if timeout_s > _CEIL_THRESHOLD_S:
            # Deadlines are whole seconds: one timer per second for every request due then, not one each.
            due = self._due.get(deadline)
            if due is None:
                due = self._due[deadline] = set()
                loop.call_at(deadline, self._expire_due, deadline)
            due.add(waiter)
        else:
            timer = loop.call_at(deadline, _expire, waiter)
        transport.write(b"%s%d\r\n\r\n%s" % (self._head, len(body), body))
        try:
            answer = await waiter
        except BaseException:  # timeout, drop, cancellation: the answer may still come, never reuse
            connection.close()
            self._release(connection, loop.time())
            raise
        finally:
            if due is not None:
                due.discard(waiter)
            elif timer is not None:
                timer.cancel()
        self._release(connection, loop.time())
        return answer

    def _expire_due(self, deadline: float) -> None:
        for waiter in self._due.pop(deadline, ()):
            _expire(waiter)

    async def aclose(self) -> None:
        """Close every connection and wait until they are closed (TLS ones that do not finish their shutdown
        within ``CLOSE_TIMEOUT_S`` are aborted); requests still in flight fail as dropped, later ones raise
        ``RuntimeError`` (as aiohttp's closed session does)."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        self._idle = []
        while self._waiters:
            self._wake()
        for connection in list(self._connections):
            connection.close()
        loop = self._loop
        if loop is None:
            return
        deadline = loop.time() + CLOSE_TIMEOUT_S
        while self._connections and loop.time() < deadline:
            await asyncio.sleep(0.01)
        for connection in list(self._connections):
            connection.abort()
        await asyncio.sleep(0)  # aborted transports call connection_lost on the next turn of the loop

    # ----------------------------------------------------------------------------------- connections

    def _take_idle(self, now: float) -> _Connection | None:
        idle = self._idle
        while idle:
            connection = idle.pop()
            if connection.alive and connection.reusable and now - connection.idle_since <= KEEPALIVE_TIMEOUT_S:
                return connection
            connection.close()
            self.forget(connection)  # a TLS shutdown may take a while: its slot is free now
        return None

    async def _connect(self, deadline: float) -> _Connection:
        """A new connection, waiting for a free one first when ``max_connections`` are open."""
        try:
            async with asyncio.timeout_at(deadline):
                while True:
                    assert self._loop is not None
                    if self._closed:
                        raise RuntimeError("Session is closed")
                    connection = self._take_idle(self._loop.time())
                    if connection is not None:
                        return connection
                    if self._open < self._max_connections:
                        break
                    waiter = self._loop.create_future()
                    self._waiters.append(waiter)
                    try:
                        await waiter
                    except BaseException:
                        if waiter.done() and not waiter.cancelled():
                            self._wake()  # woken, yet leaving (cancelled, timed out): pass the turn on
                        raise
                self._open += 1
                try:
                    connection = await self._open_connection()
                except BaseException:
                    self._open -= 1
                    self._wake()
                    raise
                self._connections.add(connection)
                if self.closed:  # closed while connecting
                    connection.close()
                    self.forget(connection)
                    raise RuntimeError("Session is closed")
                return connection
        except TimeoutError as exc:
            if isinstance(exc, aiohttp.ClientError):
                raise
            raise aiohttp.ConnectionTimeoutError(f"Connection timeout to host {self._url}") from exc

    async def _open_connection(self) -> _Connection:
        assert self._loop is not None
        host = self._host
        try:
            _transport, connection = await self._loop.create_connection(
                lambda: _Connection(self), host, self._port, ssl=self._ssl,
                server_hostname=host.rstrip(".") if self._ssl is not None else None, happy_eyeballs_delay=0.25)
        except socket.gaierror as exc:
            raise aiohttp.ClientConnectorDNSError(self._key, exc) from exc
        except ssl.CertificateError as exc:
            raise aiohttp.ClientConnectorCertificateError(self._key, exc) from exc
        except ssl.SSLError as exc:
            raise aiohttp.ClientConnectorSSLError(self._key, exc) from exc
        except OSError as exc:
            if exc.errno is None and isinstance(exc, TimeoutError):
                raise
            raise aiohttp.ClientConnectorError(self._key, exc) from exc
        return connection

    def _release(self, connection: _Connection, now: float) -> None:
        if connection.alive and connection.reusable and not self._closed:
            connection.idle_since = now
            self._idle.append(connection)
            if self._sweeper is None and self._loop is not None:
                self._sweeper = self._loop.call_at(now + KEEPALIVE_TIMEOUT_S, self._sweep)
        else:
            connection.close()
            self.forget(connection)
        if self._waiters:
            self._wake()

    def forget(self, connection: _Connection) -> None:
        """``connection`` is closing (here or by the server): it no longer counts against the limit."""
        if connection.counted:
            connection.counted = False
            self._open -= 1
            self._wake()

    def lost(self, connection: _Connection) -> None:
        """``connection`` is closed: forgotten, and no longer waited for by :meth:`aclose`."""
        self.forget(connection)
        self._connections.discard(connection)

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _sweep(self) -> None:
        """Close connections idle for longer than the keep-alive timeout (as aiohttp's connector does)."""
        self._sweeper = None
        assert self._loop is not None
        now = self._loop.time()
        keep = []
        for connection in self._idle:
            if connection.alive and now - connection.idle_since <= KEEPALIVE_TIMEOUT_S:
                keep.append(connection)
            else:
                connection.close()
                self.forget(connection)
        self._idle = keep
        if keep:
            oldest = min(c.idle_since for c in keep)
            self._sweeper = self._loop.call_at(oldest + KEEPALIVE_TIMEOUT_S + 0.001, self._sweep)

    def malformed(self, message: str) -> aiohttp.ClientResponseError:
        """What aiohttp raises for an answer its parser refuses."""
        return aiohttp.ClientResponseError(self._request_info, (), status=400, message=message)


_DEFAULT_CONTEXT: ssl.SSLContext | None = None


def _default_context() -> ssl.SSLContext:
    """The verifying context aiohttp uses for ``ssl=True``: the default trust store, ALPN ``http/1.1``."""
    global _DEFAULT_CONTEXT
    if _DEFAULT_CONTEXT is None:
        context = ssl.create_default_context()
        context.set_alpn_protocols(("http/1.1",))
        _DEFAULT_CONTEXT = context
    return _DEFAULT_CONTEXT

