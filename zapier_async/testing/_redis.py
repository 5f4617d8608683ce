"""A throw-away ``redis-server`` on 127.0.0.1, for the tests and benchmarks (not public API).

`redis_server()` starts one with no persistence in a temporary directory, waits until it
says it is ready (its own log line, never a guessed delay) and stops it on exit, even when
the body raised. Its log is drained by a daemon thread, so a chatty server never blocks on a
full pipe.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import threading
from collections import deque
from collections.abc import Iterator
from typing import Final

__all__ = ["RedisServer", "RedisServerNotFoundError", "free_port", "redis_server"]

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

    def __init__(self, proc: subprocess.Popen[str], port: int) -> None:
        self.proc = proc
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self.log: deque[str] = deque(maxlen=50)
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._drain, name="redis-server-log", daemon=True)
        self._reader.start()

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
        proc = subprocess.Popen(
            [
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
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        server = RedisServer(proc, port)
        try:
            server.wait_ready(ready_timeout)
            yield server
        finally:
            server.stop()
