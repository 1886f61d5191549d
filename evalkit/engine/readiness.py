"""Readiness of a launched server: ``/health`` and ``/v1/models`` polled from a thread, so
that the time a server first answered is known also when it is waited for late."""

from __future__ import annotations

import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable

from evalkit.core.errors import EngineError
from evalkit.engine.process import HEALTH_POLL_S

#: what a server must answer, in this order, to be ready
READY_PATHS = ("/health", "/v1/models")


class ReadyWatch:
    """Watches one launched server process until it answers :data:`READY_PATHS`.

    ``failure(returncode)`` makes the error raised when the process exits first
    (``returncode``) or ``timeout_s`` passes (``None``).
    """

    def __init__(self, proc: subprocess.Popen[bytes] | None, base_url: str, t0: float,
                 timeout_s: float, failure: Callable[[int | None], EngineError],
                 name: str) -> None:
        self._proc, self._base_url, self._t0 = proc, base_url, t0
        self._deadline = t0 + timeout_s
        self._failure = failure
        self.ready_s: float | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._watch, name=name, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        try:
            self._poll()
            self.ready_s = time.monotonic() - self._t0
        except BaseException as exc:  # noqa: BLE001 -- handed to join()
            self.error = exc

    def _poll(self) -> None:
        proc = self._proc
        if proc is None:
            raise EngineError("server stopped before it was ready")
        paths = list(READY_PATHS)
        while paths:
            code = proc.poll()
            if code is not None:
                raise self._failure(code)
            if time.monotonic() > self._deadline:
                raise self._failure(None)
            try:
                with urllib.request.urlopen(self._base_url + paths[0], timeout=5) as resp:
                    if resp.status == 200:
                        paths.pop(0)
                        continue
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(HEALTH_POLL_S)

    def join(self) -> float | None:
        """Wait for the verdict (short joins: Ctrl-C stays responsive); the seconds from
        launch until ready, or the watch's error raised."""
        while self._thread.is_alive():
            self._thread.join(timeout=0.5)
        if self.error is not None:
            raise self.error
        return self.ready_s
