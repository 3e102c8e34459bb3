"""A slow or stalled websocket reader does not slow other visitors' streams or grow
the server's memory without bound.

One raw client says hello, asks for a very long reply and then never reads from its
socket again, or reads only a trickle (its receive buffer is a few KiB, so the
server's sends back up at once), while other visitors chat. Their reply latency is
compared with a baseline measured in the same test, the ASGI process's resident
memory is sampled throughout, and the server must reset the slow socket once a
frame to it has waited WS_SEND_TIMEOUT (conversations/slow_readers.py,
docs/operations.md).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import select
import socket
import statistics
import threading
import time
from urllib.parse import urlsplit

import pytest
from django.conf import settings

from conversations.models import Message
from tests import stack as stack_module
from tests.conftest import TEST_SERVER_SETTINGS
from tests.scripted_llm import Script
from tests.visitor import ORIGIN, Visitor

WS_SEND_TIMEOUT = 5
VISITORS = 6
# The stalled reader's reply: 2,000 pieces of 8 KiB over 20 s (800 KB/s), so a
# backlog kept for it would show in the server's memory within seconds.
BIG_PIECE = ("lorem ipsum " * 700)[:8192]
BIG_PIECES = 2000
BIG_INTERVAL = 0.01
BIG_RATE_BYTES = len(BIG_PIECE) / BIG_INTERVAL
# Whatever the server holds for a slow socket before it gives up on it: what the
# stream sent meanwhile (WS_SEND_TIMEOUT, plus the time the buffers took to fill),
# counted three times over for serialised copies and allocator slack.
MEMORY_BOUND_BYTES = 3 * BIG_RATE_BYTES * (WS_SEND_TIMEOUT + 2)
# The server resets the slow socket once a frame has waited WS_SEND_TIMEOUT; the
# buffers fill within a second of the stream starting. Margin for a loaded machine.
CLOSE_BOUND_SECONDS = WS_SEND_TIMEOUT + 10
# Other visitors' median time to a finished reply, relative to the baseline.
LATENCY_RATIO_BOUND = 3.0
NORMAL_REPLY = Script(reply_words=20, token_interval=0.02)


@pytest.fixture
def own_asgi(llm_server, transactional_db, request):
    """An ASGI server and a worker of this test's own: its memory is this test's alone."""
    with stack_module.log_dir() as logs:
        env = stack_module.server_env(
            database=settings.DATABASES["default"],
            redis_url=settings.REDIS_URL,
            llm_base_url=llm_server.base_url,
            # Moderation is not under test, and checking a 16 MiB answer takes a while.
            **{
                **TEST_SERVER_SETTINGS,
                "WS_SEND_TIMEOUT": str(WS_SEND_TIMEOUT),
                "MODERATION_ENABLED": "false",
            },
        )
        children: list[stack_module.Child] = []
        try:
            children.append(stack_module.CeleryWorker(env, logs))
            children.append(stack_module.AsgiServer(env, logs))
            yield children[1]
        finally:
            stack_module.stop_all(children, request)


class StalledReader:
    """A websocket client that says hello, asks one question and then reads nothing
    (`drip=0`) or only `drip` bytes every half second: far slower than the server
    sends.

    Its receive buffer is set to a few KiB before connecting, so the TCP window
    closes after a few KiB and everything the server sends afterwards backs up on
    the server's side.
    """

    def __init__(self, ws_url: str, path: str, token: str, *, drip: int = 0) -> None:
        url = urlsplit(ws_url)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.connect((url.hostname, url.port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET {path} HTTP/1.1\r\nHost: {url.netloc}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                f"Sec-WebSocket-Version: 13\r\nOrigin: {ORIGIN}\r\n\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(1)
            assert chunk, "the server closed the handshake"
            head += chunk
        assert head.startswith(b"HTTP/1.1 101"), head
        self.send({"type": "hello", "token": token, "last_seq": 0})
        self.reset = threading.Event()
        self._stop = threading.Event()
        self._dripper = threading.Thread(target=self._drip, args=(drip,), daemon=True)
        if drip:
            self._dripper.start()

    def _drip(self, size: int) -> None:
        while not self._stop.wait(0.5):
            try:
                if not self.sock.recv(size, socket.MSG_DONTWAIT):
                    self.reset.set()
                    return
            except BlockingIOError:
                continue
            except OSError:
                self.reset.set()
                return

    def send(self, frame: dict) -> None:
        payload = json.dumps(frame).encode()
        mask = os.urandom(4)
        assert len(payload) < 65536, "one text frame with a 16-bit length at most"
        if len(payload) < 126:
            header = bytes([0x81, 0x80 | len(payload)])
        else:
            header = bytes([0x81, 0x80 | 126]) + len(payload).to_bytes(2, "big")
        masked = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def closed_by_server(self) -> bool:
        """Whether the server has closed (or reset) the connection."""
        if self.reset.is_set():
            return True
        poller = select.poll()
        poller.register(self.sock, select.POLLRDHUP | select.POLLHUP | select.POLLERR)
        return any(
            mask & (select.POLLRDHUP | select.POLLHUP | select.POLLERR)
            for _, mask in poller.poll(0)
        )

    def close(self) -> None:
        self._stop.set()
        if self._dripper.is_alive():
            self._dripper.join()
        self.sock.close()


class MemorySampler:
    """Samples a process's resident memory every quarter second, in a thread."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(stack_module.rss_kib(self.pid) * 1024)
            self._stop.wait(0.25)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


async def _chat_latencies(asgi, site_key: str, n: int) -> list[float]:
    """n visitors at once, each asking one question: seconds from send to `done`."""

    async def one(i: int) -> float:
        visitor = Visitor(asgi.url, asgi.ws_url, site_key)
        conversation = await asyncio.to_thread(visitor.start)
        async with visitor.socket(conversation) as socket_:
            started = time.monotonic()
            await socket_.say(f"Where is order number {i}?")
            _, done = await socket_.reply(timeout=60)
            assert done["status"] == "complete", done
            return time.monotonic() - started

    return list(await asyncio.gather(*(one(i) for i in range(n))))


@pytest.mark.parametrize("drip", [0, 4096], ids=["stalled", "slow"])
def test_a_stalled_or_slow_reader_neither_slows_other_visitors_nor_grows_memory(
    own_asgi, llm, site, capsys, drip
):
    asgi = own_asgi
    llm.default = NORMAL_REPLY
    llm.enqueue(Script(tokens=[BIG_PIECE] * BIG_PIECES, token_interval=BIG_INTERVAL), "everything")

    # Warm up (imports, connection pools), then the baseline.
    asyncio.run(_chat_latencies(asgi, site.public_key, 2))
    baseline = asyncio.run(_chat_latencies(asgi, site.public_key, VISITORS))
    rss_before = stack_module.rss_kib(asgi.process.pid) * 1024

    stalled_visitor = Visitor(asgi.url, asgi.ws_url, site.public_key)
    conversation = stalled_visitor.start()
    with MemorySampler(asgi.process.pid) as memory:
        reader = StalledReader(
            asgi.ws_url, conversation["websocket_url"], stalled_visitor.token, drip=drip
        )
        try:
            reader.send({"type": "message", "text": "Tell me everything", "client_id": "big-1"})
            stalled_at = time.monotonic()
            # The long reply is streaming (and backing up) before the others start.
            llm.wait_for_requests(len(llm.requests) + 1, timeout=15)
            time.sleep(1)
            loaded = asyncio.run(_chat_latencies(asgi, site.public_key, VISITORS))
            closed_after = None
            while time.monotonic() - stalled_at < CLOSE_BOUND_SECONDS + 20:
                if reader.closed_by_server():
                    closed_after = time.monotonic() - stalled_at
                    break
                time.sleep(0.1)
            # Keep sampling until the long reply has been stored: a backlog kept for
            # the stalled socket would grow all the while.
            deadline = time.monotonic() + 60
            while (
                big_reply := Message.objects.filter(reply_to__client_id="big-1")
                .exclude(status=Message.Status.STREAMING)
                .first()
            ) is None:
                assert time.monotonic() < deadline, "the long reply never finished"
                time.sleep(0.5)
            time.sleep(2)
        finally:
            reader.close()
    rss_peak = max(memory.samples)
    rss_after = memory.samples[-1]

    baseline_median = statistics.median(baseline)
    loaded_median = statistics.median(loaded)
    ratio = loaded_median / baseline_median
    mib = 1024 * 1024
    kind = "slow" if drip else "stalled"
    with capsys.disabled():
        print(
            f"\n{kind} reader: baseline median {baseline_median:.3f} s, "
            f"with the {kind} reader {loaded_median:.3f} s "
            f"(ratio {ratio:.2f}, max {max(loaded):.3f} s); "
            f"closed by the server after {closed_after and round(closed_after, 1)} s; "
            f"ASGI RSS before {rss_before / mib:.1f} MiB, peak {rss_peak / mib:.1f} MiB, "
            f"after {rss_after / mib:.1f} MiB (bound +{MEMORY_BOUND_BYTES / mib:.0f} MiB); "
            f"the long reply ended {big_reply.status} ({len(big_reply.text) / mib:.1f} MiB) "
            f"after {big_reply.total_time_ms} ms"
        )
    assert ratio <= LATENCY_RATIO_BOUND, (baseline, loaded)
    assert closed_after is not None and closed_after <= CLOSE_BOUND_SECONDS, closed_after
    assert rss_peak - rss_before <= MEMORY_BOUND_BYTES, (rss_before, rss_peak)
