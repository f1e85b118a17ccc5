"""asyncio without OpenSSL until something asks for `ssl`: engines and controllers don't map libssl and
libcrypto, and TLS through asyncio still works in a process that imports `ssl` later."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from ipphpc import Client, paths

from .helpers import clean_env

_TLS_ECHO = textwrap.dedent("""
    import sys
    from ipphpc.lazyssl import import_asyncio
    asyncio = import_asyncio()
    held_back = [m for m in ("ssl", "_ssl", "_hashlib") if m in sys.modules]
    assert not held_back, held_back
    assert asyncio.sslproto.ssl is None

    import ssl
    assert asyncio.sslproto.ssl is ssl and asyncio.base_events.ssl is ssl and asyncio.selector_events.ssl is ssl
    assert asyncio.sslproto.SSLAgainErrors == (ssl.SSLWantReadError, ssl.SSLSyscallError)

    cert, key = sys.argv[1], sys.argv[2]

    async def echo(reader, writer):
        writer.write(await reader.readline())
        await writer.drain()
        writer.close()

    async def main():
        server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_ctx.load_cert_chain(cert, key)
        client_ctx = ssl.create_default_context(cafile=cert)
        server = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx, server_hostname="localhost")
        writer.write(b"over tls\\n")
        line = await reader.readline()
        assert writer.get_extra_info("ssl_object").version().startswith("TLS"), "not encrypted"
        writer.close()
        server.close()
        return line

    print(asyncio.run(asyncio.wait_for(main(), 20)).decode().strip())
""")


@pytest.fixture
def self_signed(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return str(cert), str(key)


def test_asyncio_tls_works_once_ssl_is_imported(self_signed):
    out = subprocess.run([sys.executable, "-c", _TLS_ECHO, *self_signed], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "over tls"


def test_asyncio_already_imported_is_left_as_it_is():
    code = ("import asyncio, sys\nfrom ipphpc.lazyssl import import_asyncio\n"
            "assert import_asyncio() is asyncio and asyncio.sslproto.ssl is sys.modules['ssl']\n"
            "assert not any(type(f).__name__ == '_SslWatch' for f in sys.meta_path)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


def _mapped(pid: int, names: tuple[str, ...]) -> list[str]:
    with open(f"/proc/{pid}/maps") as f:
        return sorted({line.split()[-1] for line in f if any(n in line for n in names)})


def test_engine_and_controller_map_no_openssl(spawner, pdir):
    """An engine runs tasks and a controller routes them without OpenSSL in memory; a task that imports ssl
    gets asyncio's TLS with it."""
    cid = "nossl"
    ctl, _, _ = spawner.controller(pdir, cid)
    spawner.engine(pdir, cid, env=clean_env())
    with Client(paths.connection_file(pdir, "client", cid)) as rc:
        rc.wait_for_engines(1, timeout=30)
        pid = rc[0].apply_sync(os.getpid)
        assert rc[0].apply_sync(sum, [1, 2, 3]) == 6
        assert _mapped(pid, ("libssl", "libcrypto")) == []
        assert _mapped(ctl.pid, ("libssl", "libcrypto")) == []

        def import_ssl():
            import asyncio.sslproto
            import ssl
            return asyncio.sslproto.ssl is ssl, ssl.OPENSSL_VERSION
        given, version = rc[0].apply_sync(import_ssl)
        assert given and version.startswith("OpenSSL")
        assert any("libssl" in m for m in _mapped(pid, ("libssl",)))
