"""A throw-away ``redis-server`` on 127.0.0.1, for the tests and benchmarks (not public API).

`redis_server()` starts one with no persistence in a temporary directory, waits until it
says it is ready (its own log line, never a guessed delay) and stops it on exit, even when
the body raised. Its log is drained by a daemon thread, so a chatty server never blocks on a
full pipe.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import tempfile
import threading
from collections import deque
from collections.abc import Coroutine, Iterator
from typing import Any, Final

__all__ = [
    "RedisServer",
    "RedisServerNotFoundError",
    "StallProxy",
    "free_port",
    "redis_server",
]

READY_LINE: Final = "Ready to accept connections"
INSTALL_HINT: Final = "redis-server is not installed (apt-get install redis-server; .ci/run does)"


class RedisServerNotFoundError(RuntimeError):
    """No ``redis-server`` executable was found (tests skip, benchmarks stop)."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A running ``redis-server`` process bound to 127.0.0.1.

    Attributes:
        port: Its TCP port.
        url: ``redis://127.0.0.1:{port}/0``.
    """

    def __init__(
        self, proc: subprocess.Popen[str], port: int, argv: list[str] | None = None
    ) -> None:
        self.proc = proc
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self.log: deque[str] = deque(maxlen=50)
        self._argv = argv
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._drain, name="redis-server-log", daemon=True)
        self._reader.start()

    def restart(self, timeout: float = 20.0) -> None:
        """Stop the server and start a new one on the same port: every key is lost (no
        persistence), as after a crash or a deploy of a cache-only Redis.

        Raises:
            RuntimeError: The new server did not start.
        """
        assert self._argv is not None, "restart() needs a server started by redis_server()"
        self.stop()
        self.proc = subprocess.Popen(
            self._argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._drain, name="redis-server-log", daemon=True)
        self._reader.start()
        self.wait_ready(timeout)

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.log.append(line.rstrip())
            if READY_LINE in line:
                self._ready.set()
        self._ready.set()  # exited: stop waiting (`wait_ready` checks the process)

    def wait_ready(self, timeout: float) -> None:
        """Block until the server accepts connections.

        Raises:
            RuntimeError: It exited, or said nothing within `timeout` seconds.
        """
        if not self._ready.wait(timeout) or self.proc.poll() is not None:
            tail = "\n".join(self.log)
            raise RuntimeError(f"redis-server did not become ready:\n{tail}")

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 10 s) and reap it. Idempotent."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@contextlib.contextmanager
def redis_server(*, ready_timeout: float = 20.0) -> Iterator[RedisServer]:
    """Start a ``redis-server`` on a free port of 127.0.0.1; stop it on exit.

    Raises:
        RedisServerNotFoundError: ``redis-server`` is not on PATH.
        RuntimeError: It did not start.
    """
    exe = shutil.which("redis-server")
    if exe is None:
        raise RedisServerNotFoundError(INSTALL_HINT)
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        argv = [
            exe,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            tmp,
            "--daemonize",
            "no",
            # DEBUG SLEEP from loopback only: the tests stall Redis with it (StallProxy).
            "--enable-debug-command",
            "local",
        ]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        server = RedisServer(proc, port, argv)
        try:
            server.wait_ready(ready_timeout)
            yield server
        finally:
            server.stop()


_DEBUG_SLEEP: Final = "*3\r\n$5\r\nDEBUG\r\n$5\r\nSLEEP\r\n${}\r\n{}\r\n"


class StallProxy:
    """A TCP proxy in front of a redis-server that can stall Redis under one command.

    `stall_next(marker, seconds)` arms it: the next client write containing ``marker`` is
    preceded, on the same upstream connection, by ``DEBUG SLEEP seconds`` (whose ``+OK`` the
    proxy swallows). Redis runs the sleep and then the command, in that order, so the command
    is executed (late) by a Redis that stalled while the client waited for it: exactly what a
    client with a shorter ``socket_timeout`` meets when Redis stalls (a fork, a slow
    command, a paused VM). Deterministic: no race between connections.

    Use as ``async with StallProxy(port) as proxy:`` and point the client at ``proxy.url``.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self.url = ""
        self.stalls = 0
        self.stalled = asyncio.Event()  # set once a stall was sent to Redis
        self._armed: tuple[bytes, float] | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    def stall_next(self, marker: bytes, seconds: float) -> None:
        """Stall Redis for ``seconds`` right before the next command containing ``marker``."""
        self._armed = (marker, seconds)

    async def __aenter__(self) -> StallProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        self.url = f"redis://127.0.0.1:{self.port}/0"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks))
        await self._server.wait_closed()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        ureader, uwriter = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self._writers.update((cwriter, uwriter))
        swallow = [0]  # bytes of "+OK\r\n" replies still to drop from upstream
        self._spawn(self._up(creader, uwriter, swallow))
        self._spawn(self._down(ureader, cwriter, swallow))

    async def _up(
        self, creader: asyncio.StreamReader, uwriter: asyncio.StreamWriter, swallow: list[int]
    ) -> None:
        with contextlib.suppress(OSError):
            while data := await creader.read(65536):
                armed = self._armed
                if armed is not None and armed[0] in data:
                    self._armed = None
                    self.stalls += 1
                    self.stalled.set()
                    seconds = repr(armed[1])
                    uwriter.write(_DEBUG_SLEEP.format(len(seconds), seconds).encode())
                    swallow[0] += len(b"+OK\r\n")
                uwriter.write(data)
                await uwriter.drain()
        # The client left: keep the upstream connection open until Redis answered what it
        # was sent (its reply is dropped), as a real server would run it anyway.
        with contextlib.suppress(OSError):
            uwriter.write_eof()

    async def _down(
        self, ureader: asyncio.StreamReader, cwriter: asyncio.StreamWriter, swallow: list[int]
    ) -> None:
        with contextlib.suppress(OSError):
            while data := await ureader.read(65536):
                if swallow[0]:
                    cut = min(swallow[0], len(data))
                    swallow[0] -= cut
                    data = data[cut:]
                if data and not cwriter.is_closing():
                    cwriter.write(data)
                    await cwriter.drain()
        cwriter.close()
