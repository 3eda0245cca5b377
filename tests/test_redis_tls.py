"""rediss:// with certificate verification, through a TLS terminator in front of a real valkey.

The embedded valkey binary is built without TLS, so a small TLS proxy (Python's ssl module, a
self-signed certificate made by the openssl CLI) stands in for a TLS-enabled Redis.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import threading
from pathlib import Path

import pytest
from _outputs_helpers import make_result, start_server

from pipeline.client import CrowdClient
from pipeline.config import RedisConfig
from pipeline.sinks.redis_sink import RedisSink


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.close()
            except OSError:
                pass


def _tls_proxy(cert: Path, key: Path, target_port: int) -> tuple[socket.socket, int]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    lsock = socket.create_server(("127.0.0.1", 0))

    def accept() -> None:
        while True:
            try:
                raw, _ = lsock.accept()
            except OSError:
                return
            try:
                tls = ctx.wrap_socket(raw, server_side=True)
            except (ssl.SSLError, OSError):
                raw.close()  # e.g. the client refused our certificate
                continue
            up = socket.create_connection(("127.0.0.1", target_port))
            threading.Thread(target=_pump, args=(tls, up), daemon=True).start()
            threading.Thread(target=_pump, args=(up, tls), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return lsock, lsock.getsockname()[1]


@pytest.fixture
def certs(tmp_path: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not found: cannot make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                    "-out", cert, "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    return cert, key


def test_rediss_with_ca_verification(tmp_path: Path, certs: tuple[Path, Path]) -> None:
    cert, key = certs
    srv = start_server(tmp_path)
    lsock, port = _tls_proxy(cert, key, srv.port)
    try:
        url = f"rediss://:{srv.password}@127.0.0.1:{port}"  # the embedded server needs it
        sink = RedisSink(RedisConfig(url=url, namespace="tls", ssl_ca_certs=str(cert)), url)
        sink.open()
        for i in range(5):
            sink.write(make_result("c", i))
        assert sink.flush()
        sink.close()
        assert sink.published == 5
        assert len(CrowdClient(srv.url, namespace="tls").counts("c")) == 5
        # without our CA the certificate is not trusted: nothing is published, nothing raised
        untrusted = RedisSink(RedisConfig(url=url, namespace="tls"), url, drain_timeout_s=0.2)
        untrusted.open()
        untrusted.write(make_result("c", 5))
        assert not untrusted.flush(1.0)
        untrusted.close()
        assert untrusted.published == 0 and untrusted.dropped == 1
    finally:
        lsock.close()
        srv.stop()
