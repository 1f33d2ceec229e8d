"""A fault-injecting HTTP proxy on 127.0.0.1 in front of the S3 test server.

Every request is parsed (HTTP/1.1 with keep-alive, bodies framed by ``Content-Length`` or chunked)
and either forwarded to the upstream server or answered with a fault chosen by ``decide(method,
target)``:

- ``"503"``: ``503 Slow Down`` with S3's ``SlowDown`` error body (the request body is read first);
- ``"reset"``: the connection is reset (``SO_LINGER`` 0) right after the request head;
- ``"drop"``: the connection is closed without an answer;
- ``"delay"``: forwarded after :attr:`FaultProxy.delay_s` seconds.

It counts what it did in :attr:`FaultProxy.counts`.
"""

from __future__ import annotations

import random
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable

SLOW_DOWN = (b"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code>"
             b"<Message>Please reduce your request rate.</Message></Error>")


def _read_until(sock: socket.socket, buffer: bytearray, marker: bytes) -> bytes | None:
    while marker not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        buffer += chunk
    index = buffer.index(marker) + len(marker)
    head = bytes(buffer[:index])
    del buffer[:index]
    return head


def _read_exact(sock: socket.socket, buffer: bytearray, n: int) -> bytes:
    while len(buffer) < n:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed in a body")
        buffer += chunk
    data = bytes(buffer[:n])
    del buffer[:n]
    return data


def _headers(head: bytes) -> dict[str, str]:
    out = {}
    for line in head.split(b"\r\n")[1:]:
        if b":" in line:
            name, value = line.split(b":", 1)
            out[name.strip().lower().decode()] = value.strip().decode()
    return out


def _read_body(sock: socket.socket, buffer: bytearray, headers: dict[str, str], until_close: bool = False) -> bytes:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = b""
        while True:
            size_line = _read_until(sock, buffer, b"\r\n")
            if size_line is None:
                raise ConnectionError("closed in a chunk")
            body += size_line
            size = int(size_line.split(b";")[0].strip(), 16)
            body += _read_exact(sock, buffer, size + 2)
            if size == 0:
                return body
    if "content-length" in headers:
        return _read_exact(sock, buffer, int(headers["content-length"]))
    if until_close:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            buffer += chunk
        data = bytes(buffer)
        buffer.clear()
        return data
    return b""


class FaultProxy:
    """See module docstring."""

    def __init__(self, upstream_port: int, decide: Callable[[str, str], str], delay_s: float = 2.0) -> None:
        self.upstream_port, self.decide, self.delay_s = upstream_port, decide, delay_s
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._server = socket.socket()
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(256)
        self.port = self._server.getsockname()[1]
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._stop = True
        self._server.close()

    def _count(self, what: str) -> None:
        with self._lock:
            self.counts[what] += 1

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream = None
        buffer, upstream_buffer = bytearray(), bytearray()
        try:
            while True:
                head = _read_until(client, buffer, b"\r\n\r\n")
                if head is None:
                    return
                method, target = head.split(b" ", 2)[:2]
                headers = _headers(head)
                action = self.decide(method.decode(), target.decode())
                self._count(action)
                if action == "reset":
                    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return
                if headers.get("expect", "").lower() == "100-continue":
                    # Answer the client's expectation here; the upstream gets the whole request.
                    client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                    head = b"\r\n".join(line for line in head.split(b"\r\n")
                                         if not line.lower().startswith(b"expect:"))
                body = _read_body(client, buffer, headers)
                if action == "drop":
                    return
                if action == "503":
                    client.sendall(b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\n"
                                   + f"Content-Length: {len(SLOW_DOWN)}\r\nConnection: close\r\n\r\n".encode() + SLOW_DOWN)
                    return
                if action == "delay":
                    time.sleep(self.delay_s)
                if upstream is None:
                    upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
                upstream.sendall(head + body)
                response_head = _read_until(upstream, upstream_buffer, b"\r\n\r\n")
                while response_head is not None and response_head.split(b" ", 2)[1].startswith(b"1"):
                    response_head = _read_until(upstream, upstream_buffer, b"\r\n\r\n")  # skip interim 1xx
                if response_head is None:
                    return
                response_headers = _headers(response_head)
                no_body = method == b"HEAD" or response_head.split(b" ", 2)[1] in (b"204", b"304")
                closing = response_headers.get("connection", "").lower() == "close"
                response_body = b"" if no_body else _read_body(upstream, upstream_buffer, response_headers, until_close=closing)
                client.sendall(response_head + response_body)
                if response_headers.get("connection", "").lower() == "close":
                    return
        except (OSError, ConnectionError, ValueError):
            return
        finally:
            for sock in (client, upstream):
                if sock is not None:
                    try:
                        sock.close()
                    except OSError:
                        pass


def object_reads(share: float, seed: int = 0) -> Callable[[str, str], str]:
    """503 for a ``share`` of the GETs of an object (not listings)."""
    rng = random.Random(seed)
    lock = threading.Lock()

    def decide(method: str, target: str) -> str:
        path, _, query = target.partition("?")
        is_object = method == "GET" and path.count("/") >= 2 and "list-type" not in query and path.rstrip("/") != path[:0]
        with lock:
            return "503" if is_object and rng.random() < share else "forward"

    return decide


def every_request(share: float, seed: int = 0) -> Callable[[str, str], str]:
    """A fault for a ``share`` of all requests: 503, reset, dropped or delayed, in equal parts."""
    rng = random.Random(seed)
    lock = threading.Lock()

    def decide(method: str, target: str) -> str:
        with lock:
            if rng.random() >= share:
                return "forward"
            return rng.choice(["503", "reset", "drop", "delay"])

    return decide
