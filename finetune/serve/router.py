"""``python -m finetune.serve.router``: the local endpoint's front door, as an AML managed endpoint behaves.

Key auth (``Authorization: Bearer <key>``, 401 otherwise), ``POST /score`` routed by traffic weights or
to the deployment named in the ``azureml-model-deployment`` header, the deployment's status and body
forwarded unchanged, the serving deployment named in the response's ``azureml-model-deployment``
header. ``GET /`` answers unauthenticated, as a liveness probe.

Everything it routes by comes from the endpoint's state file, re-read whenever the file changes: the
endpoint replaces that file atomically, so every request sees either the old or the new weights.
Standard library only, so it starts in well under a second.
"""

from __future__ import annotations

import argparse
import hmac
import http.client
import json
import os
import random
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

DEPLOYMENT_HEADER = "azureml-model-deployment"
FORWARDED_REQUEST_HEADERS = ("Content-Type", "x-request-id", "x-ms-client-request-id", "x-ms-request-id")
FORWARDED_RESPONSE_HEADERS = (
    "Content-Type",
    "x-ms-run-function-failed",
    "x-ms-run-fn-exec-ms",
    "x-request-id",
    "x-ms-request-id",
    "x-ms-client-request-id",
)
ATTEMPTS = 3
# Seconds a client may take for each read of its request line and headers, and for its whole body: a client
# that announces a longer body than it sends must not hold a router thread forever (--read-timeout-s).
READ_TIMEOUT_S = 30.0


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over a Unix socket: how the router reaches its deployments (finetune.serve.inference_server)."""

    def __init__(self, socket_path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.socket_path = socket_path

    def connect(self) -> None:
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        connection.settimeout(self.timeout)
        try:
            connection.connect(self.socket_path)
        except BaseException:
            connection.close()
            raise
        self.sock = connection


def deployment_connection(record: dict, timeout: float) -> http.client.HTTPConnection:
    """A connection to a deployment: its Unix socket, or (state written before sockets) its loopback port."""
    if record.get("socket"):
        return UnixHTTPConnection(record["socket"], timeout)
    return http.client.HTTPConnection("127.0.0.1", record.get("port"), timeout=timeout)


class StateView:
    """The endpoint state as last written, re-read when the file's identity or timestamp changes."""

    def __init__(self, path: Path):
        self.path = path
        self._stamp = None
        self._state: dict = {}
        self._lock = threading.Lock()

    def get(self) -> dict:
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return self._state
        stamp = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if stamp != self._stamp:
            with self._lock:
                if stamp != self._stamp:
                    self._state = json.loads(self.path.read_text(encoding="utf-8"))
                    self._stamp = stamp
        return self._state


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "finetune-router"
    state: StateView
    timeout = READ_TIMEOUT_S  # socketserver applies it to every read of the client's socket

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Errors http.server raises itself (a malformed request line, an unknown method, headers too long)
        in the endpoint's documented shape, {"error": ...}, instead of an HTML page."""
        self.close_connection = True
        _, headers, payload = self._json(code, message or self.responses.get(code, ("error",))[0])
        try:
            self._send(code, payload, headers)
        except OSError:
            pass

    def _method_not_allowed(self) -> None:
        self._error(405, f"{self.command} is not served; POST /score (GET / is the liveness probe)", close=True)

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _method_not_allowed

    def do_GET(self) -> None:
        if self.path == "/":
            self._send(200, b"Healthy", {"Content-Type": "text/plain"})
        else:
            self._error(404, f"no route GET {self.path}")

    def do_POST(self) -> None:
        if self.path.split("?", 1)[0] != "/score":
            self._error(404, f"no route POST {self.path}", close=True)
            return
        state = self.state.get()
        supplied = self.headers.get("Authorization", "")
        expected = f"Bearer {state.get('key', '')}"
        if not hmac.compare_digest(supplied.encode(), expected.encode()):
            self._error(401, "missing or invalid key: send the header 'Authorization: Bearer <key>'", close=True)
            return
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self._error(411, "a Content-Length header is required", close=True)
            return
        limit = int(state.get("limits", {}).get("max_body_bytes", 1_000_000))
        if int(length) > limit:
            self._error(400, f"request body is {length} bytes; the limit is {limit}", close=True)
            return
        body = self._read_body(int(length))
        if body is None:
            self._error(
                408, f"the request body did not arrive within {self.timeout:g} s (Content-Length {length})", close=True
            )
            return
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as problem:
            # Checked here: azmlinfsrv would answer a non-UTF-8 body in its own format, not {"error": ...}.
            self._error(400, f"request body is not UTF-8 ({problem.reason} at byte {problem.start})")
            return
        headers = {name: self.headers[name] for name in FORWARDED_REQUEST_HEADERS if self.headers.get(name)}
        status, response_headers, payload = self._forward(body, headers, self.headers.get(DEPLOYMENT_HEADER))
        self._send(status, payload, response_headers)

    def _read_body(self, length: int) -> bytes | None:
        """The body, or None when it does not arrive in full within the read timeout altogether."""
        deadline = time.monotonic() + self.timeout
        chunks, received = [], 0
        try:
            while received < length:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self.connection.settimeout(remaining)
                chunk = self.rfile.read1(min(length - received, 1 << 16))
                if not chunk:
                    return None  # the client closed before sending all it announced
                chunks.append(chunk)
                received += len(chunk)
        except (TimeoutError, OSError):
            return None
        finally:
            self.connection.settimeout(self.timeout)
        return b"".join(chunks)

    def _forward(self, body: bytes, headers: dict, target: str | None) -> tuple[int, dict, bytes]:
        failed: set[str] = set()
        problem = ""
        for attempt in range(ATTEMPTS):
            state = self.state.get()
            deployments = state.get("deployments", {})
            if target:
                if target not in deployments:
                    return self._json(404, f"endpoint {state.get('name')} has no deployment {target!r}")
                name = target
            else:
                weights = {
                    name: percent
                    for name, percent in state.get("traffic", {}).items()
                    if percent > 0 and name in deployments and name not in failed
                }
                if not weights:
                    if failed:
                        break
                    return self._json(503, f"endpoint {state.get('name')} has no deployment taking traffic")
                name = random.choices(list(weights), weights=list(weights.values()))[0]
            connection = deployment_connection(deployments[name], state.get("request_timeout_s", 120))
            try:
                connection.request("POST", "/score", body=body, headers=headers)
                response = connection.getresponse()
                payload = response.read()
            except TimeoutError:
                return self._json(504, f"deployment {name} did not answer within {state.get('request_timeout_s')} s")
            except (OSError, http.client.HTTPException) as error:
                # A deployment being deleted refuses or drops connections it has not served. Scoring has no
                # side effects, so sending the request again (to the state as it is now) is safe.
                failed.add(name)
                problem = f"deployment {name} did not answer: {error}"
                self.log_message("%s; trying again", problem)
                time.sleep(0.05 * (attempt + 1))
                continue
            finally:
                connection.close()
            forwarded = {key: response.getheader(key) for key in FORWARDED_RESPONSE_HEADERS if response.getheader(key)}
            forwarded[DEPLOYMENT_HEADER] = name
            return response.status, forwarded, payload
        return self._json(502, problem)

    @staticmethod
    def _json(status: int, message: str) -> tuple[int, dict, bytes]:
        return status, {"Content-Type": "application/json"}, json.dumps({"error": message}).encode()

    def _error(self, status: int, message: str, close: bool = False) -> None:
        if close:
            # The body was not read; closing keeps it from being parsed as the next request.
            self.close_connection = True
        _, headers, payload = self._json(status, message)
        self._send(status, payload, headers)

    def _send(self, status: int, payload: bytes, headers: dict) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(payload)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Key-authenticated traffic router of a local endpoint.")
    parser.add_argument("--state-file", required=True, type=Path, help="the endpoint's state.json")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 = a free port")
    parser.add_argument("--port-file", required=True, type=Path, help="where the bound port is written")
    parser.add_argument(
        "--read-timeout-s",
        type=float,
        default=READ_TIMEOUT_S,
        help="seconds for each header read and for the whole body of a request",
    )
    args = parser.parse_args(argv)

    Handler.state = StateView(args.state_file)
    Handler.timeout = args.read_timeout_s
    try:
        server = ThreadingHTTPServer((args.host, args.port), Handler)
    except OSError as error:
        print(f"error: cannot listen on {args.host}:{args.port}: {error.strerror or error}", file=sys.stderr)
        return 2
    server.daemon_threads = True
    partial = args.port_file.with_suffix(".tmp")
    partial.write_text(str(server.server_address[1]))
    partial.replace(args.port_file)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    print(f"router listening on {args.host}:{server.server_address[1]}", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
