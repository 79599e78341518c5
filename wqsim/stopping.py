"""Stop requests: SIGTERM and SIGINT are recorded, never raised.

A signal handler that raises KeyboardInterrupt lands wherever the main thread
happens to be: inside ``Thread.join``, ``Process.join``, a lock, a half-read
reply. Each of those has left a stopping command believing its workers were
still running. Here a handler only records the request. CPython's C-level
handler also writes the signal number to a pipe (``signal.set_wakeup_fd``), and
the main loop sleeps on that pipe, so it wakes at once and stops in its own
good time. Other threads (a pool whose workers all exited) raise the same
request with ``set()``.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
from types import FrameType, TracebackType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
    """A one-way flag that signals and other threads raise, and a main loop waits on.

    Use as a context manager in the main thread: ``with StopRequest() as stop: ...``.
    """

    def __init__(self) -> None:
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        os.set_blocking(self._write_fd, False)
        self._requested = False
        self.signum: int | None = None  # the signal that asked, if one did
        self._saved_handlers: dict[int, object] = {}
        self._saved_wakeup_fd: int | None = None

    def install(self) -> StopRequest:
        """Route SIGTERM and SIGINT here (main thread only); undone by ``close()``."""
        self._saved_wakeup_fd = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        for signum in STOP_SIGNALS:
            self._saved_handlers[signum] = signal.signal(signum, self._on_signal)
        return self

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Only plain assignments: this runs between two bytecodes of whatever the main thread was doing.
        self.signum = signum
        self._requested = True

    def set(self) -> None:
        """Ask to stop, from any thread."""
        self._requested = True
        with contextlib.suppress(BlockingIOError):  # the pipe is full of wake-ups already
            os.write(self._write_fd, b"\0")

    def is_set(self) -> bool:
        return self._requested

    def wait(self, timeout_s: float | None = None) -> bool:
        """Sleep until a stop is requested (True) or ``timeout_s`` passes (False)."""
        if not self._requested:
            select.select([self._read_fd], [], [], timeout_s)
            self._drain()
        return self._requested

    def _drain(self) -> None:
        """Read the wake-up bytes. A signal's byte counts even before its Python handler has run."""
        while True:
            try:
                data = os.read(self._read_fd, 512)
            except BlockingIOError:
                return
            for byte in data:
                if byte in STOP_SIGNALS:
                    self.signum = self.signum or byte
                    self._requested = True
                elif byte == 0:
                    self._requested = True
            if not data:
                return

    @property
    def reason(self) -> str:
        return signal.Signals(self.signum).name if self.signum else "request"

    def close(self) -> None:
        for signum, handler in self._saved_handlers.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        self._saved_handlers.clear()
        if self._saved_wakeup_fd is not None:
            signal.set_wakeup_fd(self._saved_wakeup_fd)
            self._saved_wakeup_fd = None
        for fd in (self._read_fd, self._write_fd):
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self) -> StopRequest:
        return self.install()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
