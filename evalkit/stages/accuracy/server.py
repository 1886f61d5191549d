"""One variant's vLLM server in the accuracy stage: launched with its group, lm-eval's model
for it built while it starts, waited for when the first task needs it, handed to the
stage's ``before_close`` callback while still up, then stopped."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from evalkit.core.config import StudyConfig
from evalkit.core.errors import EngineError, EvalkitError
from evalkit.core.run import Run
from evalkit.core.specs import Variant
from evalkit.engine import provenance
from evalkit.stages.serving import VariantSession, warn_kernel_substitution

#: what the accuracy stage calls with a variant's live session before stopping its server
BeforeClose = Callable[[VariantSession], None]


class VariantServer:
    """The server of one variant (at most one start for all its tasks)."""

    def __init__(self, cfg: StudyConfig, run: Run, variant: Variant, checkpoint: Path,
                 make_lm: Callable[[VariantSession], Any]) -> None:
        self.cfg, self.run, self.variant, self.checkpoint = cfg, run, variant, checkpoint
        self._make_lm = make_lm  # lm-eval's model for a session (it only stores the address)
        self._stack = contextlib.ExitStack()
        self.session: VariantSession | None = None  # the running one the model talks to
        self._launched: VariantSession | None = None  # launched, not yet in use
        self._launch_error: EngineError | None = None
        self._api_lm: Any = None  # lm-eval's model for the launched server, built meanwhile

    def _open(self) -> VariantSession:
        return VariantSession.open(self.cfg, self.run, self.variant, self.checkpoint,
                                   log_name=f"vllm-accuracy-{self.variant.name}.log")

    def launch(self) -> bool:
        """Start the server without waiting for it; False when the launch failed (the first
        evaluation then starts one the usual way and reports why)."""
        session = self._open()
        try:
            session.launch()
        except EvalkitError as exc:
            self.run.log(f"accuracy {self.variant.name}: server launch failed: {exc}")
            return False
        self._launched = session
        return True

    def prepare(self) -> None:
        """While the launched server starts: build lm-eval's model for it. A failure here is
        raised where the variant first needs its model."""
        session = self._launched
        if session is None or self._api_lm is not None:
            return
        try:
            self._api_lm = self._make_lm(session)  # it logs how long that took
        except Exception as exc:  # noqa: BLE001 -- reported where the model is needed
            self.run.log(f"accuracy {self.variant.name}: could not prepare lm-eval's model "
                         f"while the server starts ({type(exc).__name__}: {exc}); retried "
                         "once the server is up")

    def settle(self) -> bool:
        """Wait for a server launched beside others, so that none is still starting while
        another variant's latency is measured; True when it is up (also when this variant
        already uses it). A failed start is kept and raised where this variant first needs
        its model."""
        if self._launched is None:
            return self.session is not None and self.session.alive()
        if self._launched.startup_s is None:
            try:
                self._launched.wait()
            except EngineError as exc:
                self._launched, self._launch_error = None, exc
                return False
        return True

    def start(self, notes: list[str]) -> Any:
        """Wait for the server (launching it if its group did not) and return lm-eval's model
        for it; the kernels its log names are added to ``notes``."""
        if self._launch_error is not None:  # started beside others and failed (settle)
            exc, self._launch_error = self._launch_error, None
            raise exc
        if self._launched is None:  # not launched with its group (failed, or not needed then)
            self._launched = self._open().launch()
        self.prepare()  # done already when launched with its group
        session, self._launched = self._launched, None
        self._stack.callback(session.stop)
        session.wait()
        self.session = session
        kernels = provenance(session.log_text()).get("linear_kernels")
        if kernels:
            notes.append(f"vLLM kernels: {kernels}")
        warn_kernel_substitution(self.run, "accuracy", self.variant, kernels)
        self.run.log(f"accuracy {self.variant.name}: vLLM server up in "
                     f"{session.startup_s:.1f}s at {session.base_url}; kernels: "
                     f"{kernels or 'unquantized'}")
        lm, self._api_lm = self._api_lm, None
        # None: preparing it failed while the server started; once more, raising this time
        return lm if lm is not None else self._make_lm(session)

    @property
    def log_path(self) -> Path | None:
        """The log of the server in use (None when none is)."""
        return self.session.log_path if self.session is not None else None

    def died(self, wait_s: float = 0.0) -> str | None:
        """How the server in use ended (``killed by SIGKILL``, ``exit code 1``) when it is no
        longer running, waiting up to ``wait_s`` for it to end (a server whose engine died
        answers errors for a moment before its API process exits); None while it runs or
        when none is in use."""
        session = self.session
        if session is None:
            return None
        deadline = time.monotonic() + wait_s
        while session.alive():
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.2)
        return session.exit_description()

    def restart(self) -> Any:
        """Start the server in use again after it died (its log goes on in the same file; the
        port changes) and return lm-eval's model for the new address.

        Raises:
            EngineError: the server did not come up again (the engine's reason).
        """
        session = self.session
        if session is None:
            raise EngineError(f"{self.variant.name}: no server in use to restart")
        session.restart()
        self.run.log(f"accuracy {self.variant.name}: vLLM server up again in "
                     f"{session.startup_s:.1f}s at {session.base_url}")
        return self._make_lm(session)

    def close(self, beside: Sequence[str] = (), before_close: BeforeClose | None = None) -> None:
        """Hand the live session to ``before_close`` (``beside``: variants whose servers wait
        idle meanwhile; its failures are logged), then stop the server."""
        session = self.session
        if session is not None and session.alive() and before_close is not None:
            session.beside = list(beside)
            try:
                before_close(session)
            except EvalkitError as exc:
                self.run.log(f"latency on the accuracy server of {self.variant.name} failed "
                             f"(the latency stage will retry): {exc}")
        self.close_quietly()

    def close_quietly(self) -> None:
        """Stop the server without handing it on (an interrupt); safe to repeat."""
        self.session = None
        self._api_lm = None
        launched, self._launched = self._launched, None
        if launched is not None:  # launched but never needed (e.g. a failure, an interrupt)
            launched.stop()
        self._stack.close()
