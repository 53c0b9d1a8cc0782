"""An HTTP proxy on loopback in front of an S3 endpoint (the moto server of the tests) that
passes requests on as they came, except those a rule picks, which it fails as a network
or a server does: an error status, a connection reset, a body cut short, bytes altered,
an answer that never comes, or a request held until the test releases it. It counts the
requests it sees, so a test can say what work a command did (not how long it took)."""

from __future__ import annotations

import http.client
import http.server
import socket
import struct
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
             b"<Message>Please reduce your request rate.</Message></Error>")
INTERNAL = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InternalError</Code>'
            b"<Message>We encountered an internal error. Please try again.</Message></Error>")

FAULTS = ("500", "503", "reset", "drop", "cut", "flip", "stall", "hold")


@dataclass
class Rule:
    """Fails the requests ``when(method, key)`` picks (``key``: the object's key, without the
    bucket), ``times`` of them (None: every one), with ``fault``:

    - ``500``, ``503``: that status, with S3's error body (``InternalError``, ``SlowDown``);
    - ``reset``: the connection is reset, no answer sent;
    - ``drop``: the request is passed on (the server does it), then the connection is reset
      before its answer: the answer is lost;
    - ``cut``: the answer's headers say its whole length, then half its body comes and the
      connection is closed;
    - ``flip``: one byte of the body is changed, and the object's checksum headers left
      out (as a server that sends none does);
    - ``stall``: nothing is answered until the proxy is closed;
    - ``hold``: the request waits (``held`` set) until ``released``, then goes on.
    """

    when: Callable[[str, str], bool]
    fault: str
    times: int | None = 1
    fired: int = 0
    held: threading.Event = field(default_factory=threading.Event)
    released: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        assert self.fault in FAULTS, self.fault


def key_of(path: str) -> str:
    """The object key a path-style S3 request names (``/bucket/a/b?x=y`` -> ``a/b``)."""
    return unquote(urlsplit(path).path).lstrip("/").partition("/")[2]


def on(method: str, suffix: str = "", contains: str = "") -> Callable[[str, str], bool]:
    """A rule's ``when``: requests of ``method`` whose key ends with ``suffix`` and holds ``contains``."""
    return lambda m, key: m == method and key.endswith(suffix) and contains in key


class FaultProxy:
    """``url``: where to point a remote's ``endpointurl`` (or ``AWS_ENDPOINT_URL``)."""

    def __init__(self, upstream: str) -> None:
        self.rules: list[Rule] = []
        self.requests: Counter[tuple[str, str]] = Counter()  # (method, key) -> how many came
        self.closed = threading.Event()
        self._lock = threading.Lock()
        proxy, target = self, urlsplit(upstream).netloc

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def forward(self) -> None:
                body = self._body()
                rule = proxy._rule(self.command, key_of(self.path))
                if rule is not None and rule.fault == "hold":
                    rule.held.set()
                    rule.released.wait(60)
                elif rule is not None and rule.fault == "stall":
                    proxy.closed.wait(120)
                    self.close_connection = True
                    return
                elif rule is not None and rule.fault == "reset":
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                    return
                elif rule is not None and rule.fault in ("500", "503"):
                    self._answer(int(rule.fault), SLOW_DOWN if rule.fault == "503" else INTERNAL,
                                 [("Content-Type", "application/xml")])
                    return
                upstream = http.client.HTTPConnection(target, timeout=60)
                try:
                    upstream.request(self.command, self.path, body=body, headers=dict(self.headers))
                    answer = upstream.getresponse()
                    data = answer.read()
                finally:
                    upstream.close()
                headers = [(n, v) for n, v in answer.getheaders()
                           if n.lower() not in ("transfer-encoding", "content-length", "connection", "date", "server")]
                if rule is not None and rule.fault == "drop":
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                elif self.command == "HEAD":  # (no body, but the length a GET's would have)
                    self._answer(answer.status, b"", headers, length=int(answer.getheader("Content-Length", "0")))
                elif rule is not None and rule.fault == "cut" and data:
                    self._answer(answer.status, data[: len(data) // 2], headers, length=len(data))
                    self.close_connection = True
                elif rule is not None and rule.fault == "flip" and data:
                    at = len(data) // 2  # (and no checksum header: as a server that sends none, or a range of the object)
                    headers = [(n, v) for n, v in headers if not n.lower().startswith(("x-amz-checksum", "content-md5"))]
                    self._answer(answer.status, data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :], headers)
                else:
                    self._answer(answer.status, data, headers)

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":  # passed on as it came
                    raw = b""
                    while True:
                        line = self.rfile.readline()
                        size = int(line.split(b";")[0], 16)
                        raw += line + self.rfile.read(size + 2) if size else line
                        if not size:
                            while (trailer := self.rfile.readline()) not in (b"\r\n", b"\n", b""):
                                raw += trailer
                            return raw + b"\r\n"
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _answer(self, status: int, data: bytes, headers: list[tuple[str, str]], length: int | None = None) -> None:
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data) if length is None else length))
                self.end_headers()
                self.wfile.write(data)
                self.wfile.flush()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = forward

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def fail(self, when: Callable[[str, str], bool], fault: str, times: int | None = 1) -> Rule:
        """Adds a rule (see :class:`Rule`); the first rule that picks a request fails it."""
        rule = Rule(when, fault, times)
        with self._lock:
            self.rules.append(rule)
        return rule

    def heal(self) -> None:
        """The network is back: no request is failed from now on (held ones are released)."""
        with self._lock:
            for rule in self.rules:
                rule.released.set()
            self.rules = []

    def count(self, method: str, suffix: str = "", contains: str = "") -> int:
        """How many requests of ``method`` for keys ending with ``suffix`` (holding ``contains``) came."""
        pick = on(method, suffix, contains)
        return sum(n for (m, key), n in self.requests.items() if pick(m, key))

    def _rule(self, method: str, key: str) -> Rule | None:
        with self._lock:
            self.requests[method, key] += 1
            for rule in self.rules:
                if rule.when(method, key) and (rule.times is None or rule.fired < rule.times):
                    rule.fired += 1
                    return rule
        return None

    def close(self) -> None:
        self.closed.set()
        self.heal()
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
