"""pd-bench's HTTP client against a scripted server on 127.0.0.1: responses cut anywhere."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence

import pytest

from benchmark_client.client import RequestRecord, run_request
from benchmark_client.http import HttpError, Target, stream_post

HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


class Sink:
    def __init__(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.reads: list[tuple[bytes, float, float]] = []
        self.arrived = asyncio.Event()

    def head(self, status: int, headers: dict[str, str]) -> None:
        self.status, self.headers = status, headers

    def data(self, body: bytes, now: float, wall: float) -> None:
        self.reads.append((body, now, wall))
        self.arrived.set()

    @property
    def body(self) -> bytes:
        return b"".join(r[0] for r in self.reads)


async def serve(
    pieces: Sequence[bytes], close: bool = True, pause: float = 0.01, lockstep: Sink | None = None
) -> tuple[asyncio.Server, Target]:
    """A server that reads the request, then sends ``pieces`` as separate writes; with
    ``lockstep``, each piece after the first only once that sink has taken a read more."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
        for i, piece in enumerate(pieces):
            if lockstep is not None and i:
                while len(lockstep.reads) < i:  # bounded by the client's asyncio.timeout
                    lockstep.arrived.clear()
                    await lockstep.arrived.wait()
                await asyncio.sleep(pause)  # counted from the client's stamp, however late
            writer.write(piece)
            await writer.drain()
            if lockstep is None:
                await asyncio.sleep(pause)  # separate reads on the client's side
        if close:
            writer.close()
        else:
            await asyncio.sleep(30)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, Target("127.0.0.1", port, "/generate_stream")


def exchange(
    pieces: Sequence[bytes], close: bool = True, pause: float = 0.01, lockstep: bool = False
) -> Sink:
    async def main() -> Sink:
        sink = Sink()
        server, target = await serve(pieces, close, pause, sink if lockstep else None)
        try:
            async with asyncio.timeout(10):
                await stream_post(target, b"{}", sink)
        finally:
            server.close()
        return sink

    return asyncio.run(main())


def cut(data: bytes, at: Sequence[int]) -> list[bytes]:
    bounds = [0, *at, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if b > a]


def test_chunked_body_cut_at_every_byte_arrives_whole_and_in_order() -> None:
    events = [b'data:{"token":{"text":"%d"}}\n\n' % i for i in range(3)]
    wire = HEAD + b"".join(chunk(e) for e in events) + b"0\r\n\r\n"
    for at in range(len(HEAD) - 3, len(wire)):
        sink = exchange(cut(wire, [at]), pause=0.002)
        assert sink.status == 200
        assert sink.headers["content-type"] == "text/event-stream"
        assert sink.body == b"".join(events), f"cut at byte {at}"


def test_each_read_is_stamped_on_arrival() -> None:
    events = [b"data:%d\n\n" % i for i in range(3)]
    pieces = [HEAD + chunk(events[0]), chunk(events[1]) + chunk(events[2]), b"0\r\n\r\n"]
    sink = exchange(pieces, lockstep=True)
    assert [r[0] for r in sink.reads] == [events[0], events[1] + events[2]]
    (_, t0, w0), (_, t1, w1) = sink.reads
    assert t1 - t0 >= 0.009  # the server wrote 10 ms after the client stamped the first read
    assert w1 - w0 >= 0.009


def test_sized_and_close_delimited_bodies() -> None:
    sized = b"HTTP/1.1 429 Too Many Requests\r\ncontent-length: 11\r\n\r\n"
    sink = exchange([sized + b"hello", b" world"], close=False)  # ends at its length
    assert (sink.status, sink.body) == (429, b"hello world")
    sink = exchange([b"HTTP/1.1 200 OK\r\n\r\n", b"until ", b"close"])
    assert sink.body == b"until close"


@pytest.mark.parametrize(
    ("pieces", "message"),
    [
        ([HEAD + b"zz\r\n"], "malformed response"),
        ([HEAD + b"3\r\nabcXY"], "CRLF"),
        ([HEAD + chunk(b"abc")], "inside the body"),
        ([b"HTTP/1.1 200 OK\r\n"], "before the headers"),
        ([b"SSH-2.0-OpenSSH\r\n\r\n"], "bad status line"),
    ],
)
def test_broken_responses_raise_http_errors(pieces: list[bytes], message: str) -> None:
    with pytest.raises(HttpError, match=message):
        exchange(pieces)


def test_a_request_record_from_a_stream_and_from_an_error() -> None:
    stream = [
        HEAD + chunk(b'data:{"token":{"text":"a"}}\n\ndata:{"token":{"text":"b"}}\n\n'),
        chunk(b'data:{"token":{"text":"c"},"finished":true}\n\n') + b"0\r\n\r\n",
    ]
    refused = [
        b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 31\r\n\r\n",
        b'{"error":{"type":"no_decode"}} ',
    ]

    async def main() -> list[RequestRecord]:
        out = []
        for pieces in (stream, refused):
            server, target = await serve(pieces)
            record = RequestRecord(4)
            await run_request(target, b"{}", record, "lightllm", 10, stamped=False)
            server.close()
            out.append(record)
        return out

    ok, failed = asyncio.run(main())
    assert (ok.ok, ok.output_tokens, len(ok.token_times)) == (True, 3, 3)
    assert ok.token_times[0] == ok.token_times[1] < ok.token_times[2]  # one read, then another
    assert ok.start < ok.token_times[0] and ok.token_times[2] <= ok.end
    assert (failed.error, failed.output_tokens) == ("http_503:no_decode", 0)


def test_stamps_of_tokens_an_openai_chunk_merged_each_count() -> None:
    """``--stamped`` on /v1/completions: a chunk may carry several tokens' send times run
    together; each is a token and a delivery time, and an unstamped text is one token (a
    prefill node's first, alone or merged before stamped ones)."""
    now = time.time()
    sent = [now - 0.3, now - 0.2, now - 0.1]
    merged = "".join(f"{t:.6f}" for t in sent[1:])

    def event(text: str, finish: str | None = None) -> bytes:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        return b"data: " + json.dumps({"object": "text_completion", "choices": [choice]}).encode()

    texts = ["Hi", f" there{sent[0]:.6f}", merged]
    body = b"\n\n".join([event(texts[0]), event(texts[1]), event(texts[2], "length")])
    stream = [HEAD + chunk(body[:40]), chunk(body[40:] + b"\n\ndata: [DONE]\n\n") + b"0\r\n\r\n"]

    async def main() -> RequestRecord:
        server, target = await serve(stream)
        record = RequestRecord(4)
        await run_request(target, b"{}", record, "openai", 10, stamped=True)
        server.close()
        return record

    record = asyncio.run(main())
    assert (record.ok, record.output_tokens, len(record.token_times)) == (True, 5, 5)
    assert len(record.delivery_s) == 3
    for delivery, expected in zip(record.delivery_s, (0.3, 0.2, 0.1), strict=True):
        assert expected - 1e-3 < delivery < expected + 5  # arrival (after ``now``) minus send
    assert record.delivery_s[1] - record.delivery_s[2] == pytest.approx(0.1, abs=1e-5)
