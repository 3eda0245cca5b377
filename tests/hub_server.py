"""A real HTTP file server on 127.0.0.1 for the model hub tests (``http.server`` in a thread).

It serves byte strings by path with ``Range`` support (206 + ``Content-Range``), records every
request with its ``Range`` header, and can misbehave on purpose: ``drop_at[path] = n`` sends the
full ``Content-Length`` but closes the connection after ``n`` bytes, the first time only.

Example::

    with FileServer() as srv:
        srv.files["/a.tgz"] = data
        srv.drop_at["/a.tgz"] = len(data) // 2
        url = srv.url("/a.tgz")
"""

from __future__ import annotations

import http.server
import socket
import threading
from types import TracebackType
from typing import Any


class FileServer:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.content_types: dict[str, str] = {}
        self.drop_at: dict[str, int] = {}
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.ranges = True  # False: ignore Range requests (answer 200 with the whole file)
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_args: Any) -> None:  # keep test output clean
                pass

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                path = self.path.split("?")[0]
                rng = self.headers.get("Range")
                server.requests.append((path, rng))
                data = server.files.get(path)
                if data is None:
                    self.send_error(404, "not found")
                    return
                start = 0
                if rng and server.ranges:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Type", server.content_types.get(
                    path, "application/octet-stream"))
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                drop = server.drop_at.pop(path, None)
                if drop is not None and drop > start:
                    self.wfile.write(data[start:drop])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)  # mid-file, as a dropped link
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def __enter__(self) -> FileServer:
        self.thread.start()
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)
