"""pdwire.httpserver's protocol against uvicorn's own, both real servers on 127.0.0.1: the same
raw requests get the same bytes back and the application sees the same scope."""

from __future__ import annotations

import asyncio
import json
import re
import ssl
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import uvicorn
import uvloop
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from pdwire.httpserver import header_timeout_protocol


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": scope["path"]})
        await send({"type": "websocket.close"})
        return
    if scope["type"] != "http":
        return
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    seen = {k: v for k, v in scope.items() if k not in ("extensions", "state", "client", "server")}
    seen["client_host"] = scope["client"][0]
    seen["server_host"] = scope["server"][0]  # the port differs from server to server
    seen["state"] = sorted(scope["state"])
    answer = json.dumps({"scope": seen, "body": body.decode()}, default=repr).encode()
    if scope["path"] == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"X-A", b"1")]})
        for part in (answer[:10], b"", answer[10:]):
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(answer))]
    status = 404 if scope["path"] == "/missing" else 200
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": answer})


@asynccontextmanager
async def serving(http: Any, **tls: Any) -> AsyncIterator[int]:
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, http=http, log_level="warning", root_path="/root", **tls
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        await task


async def exchange(port: int, writes: list[bytes], tls: ssl.SSLContext | None = None) -> bytes:
    """All the server answers to ``writes`` (each sent when the previous answers arrived)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=tls)
    got = b""
    try:
        for data in writes:
            writer.write(data)
            await writer.drain()
            await asyncio.sleep(0.05)
        if tls is None:
            writer.write_eof()
        async with asyncio.timeout(10):
            while chunk := await reader.read(65536):
                got += chunk
    finally:
        writer.close()
    return re.sub(rb"\r\ndate: [^\r]*", b"", got)


CASES = {
    "keep-alive and pipelining": [
        b"GET /a%20b/c?x=1&y=%20 HTTP/1.1\r\nHost: x\r\nX-Mixed-Case: V\r\n\r\n"
        b"GET /missing HTTP/1.1\r\nhost: x\r\n\r\n",
        b"GET /stream HTTP/1.1\r\nhost: x\r\nConnection: close\r\n\r\n",
    ],
    "bodies, 100-continue and HEAD": [
        b"POST /p HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: 5\r\n\r\n",
        b"hello",
        b"POST /c HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        b"HEAD /h HTTP/1.1\r\nhost: x\r\n\r\nHEAD /stream HTTP/1.1\r\nhost: x\r\n\r\n",
    ],
    "HTTP/1.0": [b"GET /old HTTP/1.0\r\n\r\n"],
    "a bad request": [b"GET / HTTP/1.1\r\nhost: x\r\n\r\nBAD\x00REQUEST\r\n\r\n"],
    "a websocket upgrade": [
        b"GET /ws HTTP/1.1\r\nhost: x\r\nconnection: Upgrade\r\nupgrade: websocket\r\n"
        b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n"
    ],
    "an unsupported upgrade": [
        b"GET /u HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: h2c\r\n\r\n"
    ],
}


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_the_same_requests_get_the_same_answers_as_from_uvicorns_protocol(
    case: str, loop: str
) -> None:
    async def run() -> None:
        answers = []
        for http in (HttpToolsProtocol, header_timeout_protocol()):
            async with serving(http) as port:
                # the server's first connection, then its later ones
                answers.append([await exchange(port, CASES[case]) for _ in range(3)])
        assert answers[0][0].startswith(b"HTTP/1.")
        assert answers[1] == answers[0]

    if loop == "uvloop":
        uvloop.run(run())
    else:
        asyncio.run(run())


def test_each_connection_has_uvicorns_fields_and_its_own_parser() -> None:
    async def run() -> None:
        config = uvicorn.Config(app, log_level="warning", root_path="/r")
        server = uvicorn.Server(config)
        protocol = header_timeout_protocol()
        theirs = HttpToolsProtocol(config, server.server_state, {"k": 1})
        conns = [protocol(config, server.server_state, {"k": 1}) for _ in range(3)]
        conns.append(protocol(config, server.server_state, {"k": 2}))  # another server's
        for conn in conns:
            mine = vars(conn)
            assert list(mine) == list(vars(theirs))  # the same fields, set in the same order
            for name, value in vars(theirs).items():
                if name in ("parser", "pipeline", "app_state"):
                    continue
                assert mine[name] == value, name
        assert conns[-1].app_state == {"k": 2}
        assert len({id(c.parser) for c in conns}) == len({id(c.pipeline) for c in conns}) == 4
        for conn in conns:
            conn.parser.feed_data(b"GET /x HTTP/1.1\r\nhost: y\r\n\r\n")
        assert all(c.scope["path"] == "/r/x" for c in conns)  # each parser calls its own

    asyncio.run(run())


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_over_tls_the_scope_and_answers_are_uvicorns_too(tmp_path: Path, loop: str) -> None:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
         "-days", "1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    client = ssl.create_default_context()
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    request = b"GET /s?q HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"

    async def run() -> None:
        answers = []
        for http in (HttpToolsProtocol, header_timeout_protocol()):
            async with serving(http, ssl_keyfile=str(key), ssl_certfile=str(cert)) as port:
                answers.append([await exchange(port, [request], client) for _ in range(2)])
        assert b'"scheme": "https"' in answers[0][0]
        assert answers[1] == answers[0]

    if loop == "uvloop":
        uvloop.run(run())
    else:
        asyncio.run(run())
