"""A real HTTP image server on 127.0.0.1, in a thread, with well-behaved and hostile routes.

Routes (the query string is ignored, as an object store checks it and serves the object):

- ``/image.png`` (and any ``/image.png?...``): ``IMAGE``, a small PNG.
- ``/signed/<name>``: ``IMAGE``; a stand-in for a pre-signed object-store URL.
- ``/redirect-signed``: 302 to ``/signed/target.png`` with a pre-signed query of its own.
- ``/missing`` 404, ``/unavailable`` 503, ``/set-cookie`` and ``/echo-cookie``.
- ``/hop/<n>``: n redirects, then ``/image.png``. ``/to-ftp``, ``/to-metadata``: bad redirects.
- ``/declared-huge``: a Content-Length of 1 GB. ``/stream``: zeros without a length, until the
  client hangs up.
- ``/slow``: the image after 1.5 s.
- ``/drip/<interval_ms>``: headers at once (Content-Length 100,000), then one byte every
  ``interval_ms``: each read arrives well within any read timeout, the body never ends in
  time.
"""

from __future__ import annotations

import io
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image

STREAM_TOTAL = 64 * 1024 * 1024
DRIP_LENGTH = 100_000
SIGNATURE = "X-Amz-Signature=5f0e1d2c3b4a69788796a5b4c3d2e1f0aabbccddeeff00112233445566778899"
"""A query parameter shaped like an S3 pre-signature; it must never reach a log."""
PRESIGNED_QUERY = (
    "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20261122%2Fus-east-1"
    f"%2Fs3%2Faws4_request&X-Amz-Date=20261122T000000Z&X-Amz-Expires=900&{SIGNATURE}"
)


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (16, 16), (255, 0, 0)).save(out, "PNG")
    return out.getvalue()


IMAGE = _png()


class ImageServer(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's default backlog of 5 drops connections during a burst (the client
    # retries after a second), which would read as a slow fetcher.
    request_queue_size = 256

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.hits: Counter[str] = Counter()
        self.streamed = 0
        self.stream_done = threading.Event()
        self.closing = threading.Event()
        """Set on shutdown: dripping handlers stop."""

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def handle_error(self, request: object, client_address: object) -> None:
        # Clients hanging up on slow or oversized answers is what the tests provoke.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]

    def presigned(self, name: str = "photo.png") -> str:
        return f"{self.base}/signed/{name}?{PRESIGNED_QUERY}"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ImageServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        self.server.hits[path] += 1
        if path == "/set-cookie":
            self._reply(302, headers={"Location": "/echo-cookie", "Set-Cookie": "session=abc"})
        elif path == "/echo-cookie":
            self._reply(200, self.headers.get("Cookie", "").encode())
        elif path == "/image.png" or path.startswith("/signed/"):
            self._reply(200, IMAGE, {"Content-Type": "image/png"})
        elif path == "/redirect-signed":
            location = f"/signed/target.png?{PRESIGNED_QUERY}"
            self._reply(302, headers={"Location": location})
        elif path == "/missing":
            self._reply(404, b"no")
        elif path == "/unavailable":
            self._reply(503, b"later")
        elif path.startswith("/hop/"):
            remaining = int(path.rsplit("/", 1)[1])
            target = f"/hop/{remaining - 1}" if remaining > 1 else "/image.png"
            self._reply(302, headers={"Location": target})
        elif path == "/to-ftp":
            self._reply(302, headers={"Location": "ftp://127.0.0.1/image.png"})
        elif path == "/to-metadata":
            self._reply(302, headers={"Location": "http://169.254.169.254/latest/meta-data/"})
        elif path == "/declared-huge":
            self.send_response(200)
            self.send_header("Content-Length", str(10**9))
            self.end_headers()
        elif path == "/stream":
            self._stream()
        elif path == "/slow":
            time.sleep(1.5)
            self._reply(200, IMAGE)
        elif path.startswith("/drip/"):
            self._drip(int(path.rsplit("/", 1)[1]) / 1000)
        else:
            self._reply(500, b"unknown route")

    def _stream(self) -> None:
        # No Content-Length: the body ends when the connection closes.
        self.send_response(200)
        self.send_header("Connection", "close")
        self.end_headers()
        chunk = b"\0" * 65536
        try:
            while self.server.streamed < STREAM_TOTAL:
                self.wfile.write(chunk)
                self.server.streamed += len(chunk)
        except OSError:
            pass
        finally:
            self.server.stream_done.set()

    def _drip(self, interval_s: float) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(DRIP_LENGTH))
        self.end_headers()
        try:
            for _ in range(DRIP_LENGTH):
                self.wfile.write(b"x")
                self.wfile.flush()
                if self.server.closing.wait(interval_s):
                    return
        except OSError:
            pass  # the client gave up, as it should


@contextmanager
def image_server() -> Iterator[ImageServer]:
    """A running ``ImageServer``; stopped (dripping handlers included) on leaving."""
    httpd = ImageServer()
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.closing.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
