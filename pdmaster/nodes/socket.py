"""The master's websocket server protocol: node messages handed to a sink as they are read.

uvicorn's websockets server queues every message for the app's task and stops reading the
socket until that task has taken it: per token frame a task wake-up, a pause and a resume of
reading, and a frame parsed by the ``websockets`` library's generator-based reader. A node
sends a frame per decode step, so this was a fifth of a master's CPU at 8 streams.

``NodeSocketProtocol`` keeps uvicorn's protocol for everything (handshake, ping/pong, close,
fragments, limits) and adds one thing an app may ask for through the scope's extension
``MESSAGE_SINK``: a function that takes each message (bytes or str), called in the
protocol's ``data_received`` in the order they arrive, instead of the queue. Then a whole,
unfragmented, masked data frame within the size limit is read here in one step (its head,
unmasking and copy in one call of ``pdwire.wsframes.read_frame``, compiled); any other
frame is passed, whole, to the ``websockets`` parser as before (which sees a stream of whole
frames, so its state stays right), and a frame past the size limit hands that parser the
rest of the connection. A sink reads synchronously, so the socket is read no faster than
its messages are handled: that is the back-pressure. The app's ``receive`` then only ever
yields the disconnect. The sink may leave work for the end of the read (the master hands
the tokens of all the frames read to their streams at once, in the same loop iteration:
no wake-up scheduled per read), which ``read()`` then does.

Sends have the symmetric shortcut, the scope extension ``FRAME_SENDER``: the master sends a
node a ~20 KB REQ frame per request, and through starlette, uvicorn and ``websockets`` each
was a chain of awaits and a copy of the payload into a serialized frame. While the
connection is open (no close sent or received, no extension negotiated) a server's binary
frame is just a head and the payload, unmasked, so the protocol writes the two itself;
``websockets`` keeps no other state of what was sent (its frames are serialized one by one
into ``writes``, which uvicorn empties after each call). Anything else takes the app's own
send. Either way a send first waits while the transport's buffer is over its high-water
mark, as uvicorn's does.
"""

from __future__ import annotations

import struct
from collections.abc import Awaitable, Callable
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import State

from pdwire.wsframes import BINARY, INCOMPLETE, REFUSED, TEXT, frame_reader

MESSAGE_SINK = "pdctl.message_sink"
"""Scope extension: ``take(sink, failed, read=None)`` to take messages: ``sink(message: bytes
| str)`` gets each one; the first exception it raises goes to ``failed(exc)`` and the messages
after it are dropped, as they are after ``take(None, None)`` (the app is done with the
socket). ``read()``, if given, is called once the messages of a read are all given (what it
raises is logged): what they left to do for all of them at once."""

FRAME_SENDER = "pdctl.frame_sender"
"""Scope extension: ``wrap(send_bytes) -> send``, a ``send(data: bytes)`` that writes a binary
frame itself while it can and otherwise awaits ``send_bytes(data)`` (the app's own send)."""

Sink = Callable[[bytes | str], None]
Failed = Callable[[Exception], None]
Read = Callable[[], None]
Send = Callable[[bytes | bytearray], Awaitable[None]]
_HEAD16 = struct.Struct("!BBH")
_HEAD64 = struct.Struct("!BBQ")
_FIN_BINARY = 0x82
_OPEN = State.OPEN  # read per frame: a constant, not the enum class's attribute


class NodeSocketProtocol(WebSocketsSansIOProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sink: Sink | None = None
        self._sink_failed: Failed = _ignore
        self._read: Read | None = None
        self._buffer = bytearray()  # a frame's start, not yet whole (only while a sink reads)
        self._parser_only = False  # a frame past the limit: the parser reads from here on
        self._read_frame = frame_reader()

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        if self.handshake_initiated and not self.close_sent:
            extensions: dict[str, Any] = self.scope.setdefault("extensions", {})
            extensions[MESSAGE_SINK] = self._set_sink
            extensions[FRAME_SENDER] = self._sender

    def _set_sink(self, sink: Sink | None, failed: Failed | None, read: Read | None = None) -> None:
        """From now on messages go to ``sink``, first those already queued, in order; what it
        raises to ``failed``, once; ``read()`` after each read's (see ``MESSAGE_SINK``)."""
        self._sink = sink or _ignore
        self._sink_failed = failed or _ignore
        self._read = read if sink is not None else None
        kept = []
        while not self.queue.empty():
            message = self.queue.get_nowait()
            if message["type"] != "websocket.receive":
                kept.append(message)
            else:
                data = message.get("bytes")
                self._give(data if data is not None else message.get("text") or "")
        for message in kept:
            self.queue.put_nowait(message)
        self._after_read()
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()

    def _sender(self, fallback: Send) -> Send:
        async def send(data: bytes | bytearray) -> None:
            if not self.writable.is_set():
                await self.writable.wait()  # set again by the drain, or by connection_lost
            conn = self.conn
            if (
                conn.state is State.OPEN
                and not self.close_sent
                and not self.disconnected
                and not conn.writes  # nothing of its own waits to go first
                and not conn.extensions  # a negotiated extension would rewrite the frame
                and not conn.expect_continuation_frame
                and not conn.debug  # it logs each frame it sends
                and not self.transport.is_closing()
            ):
                self.transport.writelines((_head(len(data)), data))
            else:
                await fallback(data)

        return send

    def _after_read(self) -> None:
        """The messages of a read are given: the app's ``read()``, if any."""
        read = self._read
        if read is not None:
            try:
                read()
            except Exception:
                self.logger.exception("the node socket's reader failed after a read")

    def _give(self, message: bytes | str) -> None:
        try:
            self._sink(message)  # type: ignore[misc]  # only called while there is a sink
        except Exception as exc:
            self._sink_dropped(exc)

    def _sink_dropped(self, exc: Exception) -> None:
        """The sink raised: it is told, once, and gets no more messages."""
        failed = self._sink_failed
        self._sink, self._sink_failed = _ignore, _ignore
        failed(exc)

    def _direct(self) -> bool:
        """May a whole data frame go to the sink (else to the parser, which knows what to do)?"""
        conn = self.conn
        return not conn.expect_continuation_frame and conn.state is _OPEN and not self.close_sent

    def send_receive_event_to_app(self) -> None:
        """A message the parser completed goes to the sink, if there is one."""
        if self._sink is None:
            super().send_receive_event_to_app()
            return
        data = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
        self.frames = []
        if self.close_sent:
            return  # the app is past websocket.close, as uvicorn's own rule
        if self.curr_msg_data_type == "text":
            try:
                text = bytes(data).decode()
            except UnicodeDecodeError:
                self.logger.warning("invalid UTF-8 in a text message from a node")
                self.conn.send_close(1007)
                self.handle_parser_exception()
                return
            self._give(text)
        else:
            self._give(bytes(data))

    def data_received(self, data: bytes) -> None:
        try:
            sink = self._sink
            if sink is None or self._parser_only or (not self._buffer and self.conn.reader.buffer):
                super().data_received(data)  # no sink, or the parser holds a frame's start
                return
            buf: bytes | bytearray = data
            if self._buffer:
                self._buffer += data
                buf = self._buffer
            conn = self.conn
            limit = conn.max_message_size
            read_frame = self._read_frame
            # Whether a data frame goes to the sink. Only the parser's path below changes it
            # while this runs (a sink is synchronous: the app's close comes after), so it is
            # read once per read, and again after that path, not per frame.
            direct = self._direct()
            pos, end = 0, len(buf)
            while pos < end:
                kind, message, stop = read_frame(buf, pos, limit)
                if kind == BINARY and direct and message is not None:  # a token frame
                    try:
                        sink(message)
                    except Exception as exc:
                        self._sink_dropped(exc)
                        sink = self._sink or _ignore
                    pos = stop
                    continue
                if kind == INCOMPLETE:
                    break
                if kind == REFUSED:
                    # unmasked, or past the limit: the parser refuses it, as it always did
                    self._parser_only = True
                    rest = bytes(buf[pos:])
                    self._buffer = bytearray()
                    super().data_received(rest)
                    return
                # a text frame's invalid UTF-8 (None) takes the parser's path: 1007
                received = (
                    _utf8(message) if kind == TEXT and direct and message is not None else None
                )
                if received is not None:
                    try:
                        sink(received)
                    except Exception as exc:
                        self._sink_dropped(exc)
                        sink = self._sink or _ignore
                else:  # anything else, whole, to the parser (and uvicorn's handlers)
                    conn.receive_data(buf[pos:stop])
                    if conn.parser_exc is not None:
                        self._buffer = bytearray()
                        self.handle_parser_exception()
                        return
                    self.handle_events()
                    direct, sink = self._direct(), self._sink or _ignore
                pos = stop
            if buf is self._buffer:
                del buf[:pos]
            elif pos < end:
                self._buffer = bytearray(buf[pos:])
        finally:  # also where the parser took the read, or it failed
            if self._read is not None:
                self._after_read()


def _ignore(message: Any) -> None:
    """The sink and its failure callback once the app is done with them."""


def _head(length: int) -> bytes:
    """A final, unmasked binary frame's head (RFC 6455 5.2), as a server sends it."""
    if length < 126:
        return bytes((_FIN_BINARY, length))
    if length < 1 << 16:
        return _HEAD16.pack(_FIN_BINARY, 126, length)
    return _HEAD64.pack(_FIN_BINARY, 127, length)


def _utf8(data: bytes) -> str | None:
    try:
        return data.decode()
    except UnicodeDecodeError:
        return None
