"""The HTTP server: the standard library's http.server, handling requests in a thread pool.

Why not a framework: the dashboard is a handful of JSON reads over indexed queries,
and a job queue's operators install it on hosts with no internet; the standard
library needs no dependency and no event loop, and a bounded pool of threads (each
with its own store connection) keeps a slow client from starving the rest.

Security: read-only unless `allow_actions`; every state change needs the token in a
header (`Authorization: Bearer` or `X-Queuectl-Token`), never a cookie, so a page
of another origin cannot send it; a request whose Origin is another origin is
refused; on a loopback bind the Host must be a loopback name (no DNS rebinding);
on any other bind every API read needs the token too.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, HTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from ..core import Queue
from ..errors import QueuectlError
from ..metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from ..metrics import exposition
from ..store import open_store
from . import api

DEFAULT_PORT = 8470
POOL_THREADS = 8
SOCKET_TIMEOUT_S = 15  # a client that sends nothing for this long frees its thread
MAX_BODY = 64 * 1024
STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/app.css": ("app.css", "text/css; charset=utf-8"),
}
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]"}


def is_loopback(host: str) -> bool:
    """Whether binding `host` exposes the server to this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ServeOptions:
    url: str  # the store
    host: str
    port: int
    allow_actions: bool = False
    token: str | None = None


class PooledHTTPServer(HTTPServer):
    """HTTPServer whose requests run in a bounded pool of threads."""

    def __init__(self, options: ServeOptions) -> None:
        self.options = options
        self.loopback = is_loopback(options.host)
        self.pool = ThreadPoolExecutor(POOL_THREADS, thread_name_prefix="queuectl-serve")
        self.local = threading.local()
        self.address_family = _family(options.host)
        super().__init__((options.host, options.port), Handler)

    def queue(self) -> Queue:
        """This thread's Queue: one store connection per pool thread."""
        queue: Queue | None = getattr(self.local, "queue", None)
        if queue is None:
            queue = Queue(open_store(self.options.url))
            self.local.queue = queue
        return queue

    def process_request(self, request: Any, client_address: Any) -> None:
        self.pool.submit(self._handle, request, client_address)

    def _handle(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)

    def server_close(self) -> None:
        super().server_close()
        self.pool.shutdown(wait=False, cancel_futures=True)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        name = host.decode() if isinstance(host, bytes) else str(host)
        shown = f"[{name}]" if ":" in name else name
        return f"http://{shown}:{port}/"


def _family(host: str) -> Any:
    import socket

    return socket.AF_INET6 if ":" in host else socket.AF_INET


def make_server(options: ServeOptions) -> PooledHTTPServer:
    """Bind the server (port 0: any free port; `url` says which) and open the store once,
    so that a bad store URL fails here, before anything is served.

    :raises OSError: the address cannot be bound.
    """
    Queue(open_store(options.url)).store.close()
    return PooledHTTPServer(options)


class Handler(BaseHTTPRequestHandler):
    server: PooledHTTPServer
    timeout = SOCKET_TIMEOUT_S
    server_version = "queuectl"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: operators scrape /metrics; errors are answered, not logged

    # -- answering ---------------------------------------------------------------------

    def send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in SECURITY_HEADERS.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_json(self, reply: api.Reply) -> None:
        body = json.dumps(reply.body, ensure_ascii=False).encode()
        self.send(reply.status, body, "application/json; charset=utf-8")

    def refuse(self, status: int, category: str, message: str) -> None:
        self.send_json(
            api.Reply(
                status,
                {"error": {"status": status, "category": category, "message": message}},
            )
        )

    # -- checks ------------------------------------------------------------------------

    def host_ok(self) -> bool:
        """On a loopback bind, only loopback names: a rebound DNS name of another site
        must not reach the API from a browser on this machine."""
        if not self.server.loopback:
            return True
        host = self.headers.get("Host", "")
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        return name in LOOPBACK_NAMES

    def same_origin(self) -> bool:
        origin = self.headers.get("Origin")
        if origin is None:
            return True  # not sent by a browser's cross-origin request
        return origin == f"http://{self.headers.get('Host', '')}"

    def token_ok(self) -> bool:
        token = self.server.options.token
        if token is None:
            return False
        auth = self.headers.get("Authorization", "")
        given = auth[7:] if auth.startswith("Bearer ") else self.headers.get("X-Queuectl-Token")
        return given is not None and hmac.compare_digest(given.encode(), token.encode())

    # -- methods -----------------------------------------------------------------------

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        if not self.host_ok():
            return self.refuse(403, "forbidden", "unexpected Host header: use 127.0.0.1")
        path, query = self.split()
        if path in STATIC:
            name, content_type = STATIC[path]
            body = resources.files(__package__).joinpath("static", name).read_bytes()
            return self.send(200, body, content_type)
        if path == "/healthz":
            return self.answer(lambda queue: api.Reply(200, healthz(queue)))
        if not (path == "/metrics" or path.startswith("/api/") or path == "/api"):
            return self.send_json(api.not_found(path))
        if not self.server.loopback and not self.token_ok():
            return self.refuse(401, "unauthorized", "send the token: Authorization: Bearer ...")
        if path == "/metrics":
            return self.answer_metrics()
        parts = [unquote(p) for p in path.removeprefix("/api").strip("/").split("/")]
        actions = self.server.options.allow_actions
        return self.answer(lambda queue: api.get(queue, parts, query, actions=actions))

    def do_POST(self) -> None:
        if not self.host_ok():
            return self.refuse(403, "forbidden", "unexpected Host header: use 127.0.0.1")
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            return self.refuse(413, "usage", "request body too large")
        self.rfile.read(length)  # actions take no body; read it so the reply is clean
        path, _ = self.split()
        parts = [unquote(p) for p in path.removeprefix("/api").strip("/").split("/")]
        if not path.startswith("/api/") or not api.is_action(parts):
            return self.send_json(api.not_found(path))
        if not self.server.options.allow_actions:
            return self.refuse(
                403, "forbidden", "read-only: start `queuectl serve --allow-actions` to allow it"
            )
        if not self.same_origin():
            return self.refuse(403, "forbidden", "cross-origin request refused")
        if not self.token_ok():
            return self.refuse(
                401, "unauthorized", "send the token: Authorization: Bearer $QUEUECTL_SERVE_TOKEN"
            )
        return self.answer(lambda queue: api.post(queue, parts))

    def do_PUT(self) -> None:
        self.refuse(405, "usage", "method not allowed")

    do_DELETE = do_PATCH = do_OPTIONS = do_PUT

    def split(self) -> tuple[str, dict[str, list[str]]]:
        parts = urlsplit(self.path)
        return parts.path, parse_qs(parts.query)

    def answer(self, route: Any) -> None:
        try:
            reply = route(self.server.queue())
        except QueuectlError as exc:
            reply = api.error_reply(exc)
        except Exception:
            # A bug: the client gets a JSON 500, the operator the traceback on stderr.
            self.server.handle_error(self.request, self.client_address)
            reply = api.Reply(
                500,
                {"error": {"status": 500, "category": "failed", "message": "internal error"}},
            )
        self.send_json(reply)

    def answer_metrics(self) -> None:
        try:
            body = exposition(self.server.queue())
        except QueuectlError as exc:
            return self.send_json(api.error_reply(exc))
        self.send(200, body, METRICS_CONTENT_TYPE)


def healthz(queue: Queue) -> dict[str, Any]:
    queue.store.count_by_state()  # the store answers
    return {"ok": True, "status": HTTPStatus.OK.phrase}
