"""Sockets whose reader is slow or has stopped reading: frames wait a bounded time,
then the server lets go of the socket.

A client that stops reading (a frozen tab, a dead network path, or on purpose)
fills the TCP window and then the server's write buffer; after that every send to
it waits. If the consumer awaited those sends, it would stop taking events from the
channel layer, whose per-channel queue has no limit (channels_redis' pub/sub layer),
so a slow reader would hold every event of its conversation in memory for as long
as it kept the socket open; and uvicorn closes a socket only once its write buffer
has drained, which a stalled reader never lets happen.

So each socket's frames go through an Outbox: the consumer queues a frame and goes
on; a task of the outbox's own writes them in order. A frame still unwritten
WS_SEND_TIMEOUT after it was queued means the reader is not keeping up: the outbox
drops its frames and resets the connection. What one socket can hold is therefore
what its conversation produces in WS_SEND_TIMEOUT seconds, plus the server's write
buffer. A client that comes back resumes from its last_seq on a new socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections import deque
from collections.abc import Awaitable, Callable

from django.conf import settings

logger = logging.getLogger(__name__)


class Outbox:
    """The frames of one socket, written in order by a task of their own."""

    def __init__(self, send: Callable[[str], Awaitable[None]], server_send: object) -> None:
        self._send = send
        # The ASGI server's own send callable, to reset the connection (see abort).
        self._server_send = server_send
        self._frames: deque[tuple[float, str]] = deque()
        self._writer: asyncio.Task | None = None
        # Set once the reader fell WS_SEND_TIMEOUT behind: nothing more is written.
        self.gave_up = False

    def put(self, text: str) -> None:
        """Queue a frame; never waits."""
        if self.gave_up:
            return
        loop = asyncio.get_running_loop()
        self._frames.append((loop.time(), text))
        if self._writer is None or self._writer.done():
            self._writer = loop.create_task(self._write())

    def cancel(self) -> None:
        """The socket is closing: drop what is still queued."""
        self._frames.clear()
        if self._writer is not None:
            self._writer.cancel()

    async def _write(self) -> None:
        loop = asyncio.get_running_loop()
        while self._frames:
            queued_at, text = self._frames[0]
            left = queued_at + settings.WS_SEND_TIMEOUT - loop.time()
            try:
                if left <= 0:
                    raise TimeoutError
                async with asyncio.timeout(left):
                    await self._send(text)
            except TimeoutError:
                self._give_up()
                return
            except Exception:
                # The socket is gone; the server tells the consumer (disconnect).
                self._frames.clear()
                return
            self._frames.popleft()

    def _give_up(self) -> None:
        logger.warning(
            "a socket's reader fell %ss behind (%d frames waiting); closing it",
            settings.WS_SEND_TIMEOUT,
            len(self._frames),
        )
        self.gave_up = True
        self._frames.clear()
        abort(self._server_send)


def abort(send: object) -> bool:
    """Reset the connection under an ASGI `send` callable, if the server exposes it.

    ASGI has no abort, and closing through the server (`websocket.close`) waits for
    the stalled reader like any other send. uvicorn's `send` is a method of the
    connection's protocol object, which holds the asyncio transport: aborting it
    frees the connection's buffers and file descriptor at once, and the server then
    reports a disconnect to the consumer. Under another server the consumer lets go
    on its next event (Outbox.gave_up), and the server closes the socket when TCP
    gives up. True if the connection was reset.
    """
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    reset = getattr(transport, "abort", None)
    if not callable(reset):
        return False
    sock = transport.get_extra_info("socket")
    if sock is not None:
        # Linger 0: the kernel drops the unsent backlog and resets the connection
        # now, instead of keeping an orphaned socket that goes on offering it to a
        # reader that does not read.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    reset()
    return True
