"""The vLLM OpenAI server as a context manager, bound to 127.0.0.1."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

from evalkit.core.environment import hardware_label
from evalkit.core.errors import EngineError
from evalkit.core.specs import EngineSpec
from evalkit.engine.checkpoint import check_checkpoint
from evalkit.engine.logparse import classify_failure
from evalkit.engine.options import engine_cli_args, engine_env
from evalkit.engine.process import describe_exit, free_port, popen_kwargs, stop_process_group
from evalkit.engine.readiness import ReadyWatch


class VLLMServer:
    """vLLM's OpenAI-compatible server in its own process group, for one checkpoint.

    Use as a context manager::

        with VLLMServer(ckpt, engine=cfg.engine, log_path=p, served_model_name="w4a16") as s:
            requests.get(s.base_url + "/v1/models")

    Leaving the block (normally, by exception or Ctrl-C) stops the whole process group.

    Attributes:
        base_url: ``http://127.0.0.1:PORT`` once started.
        port: the TCP port (chosen free at start).
        pid: the server's process id (also its process group id).
        startup_s: seconds from launch until ``/health`` and ``/v1/models`` answered.
        log_path: file receiving the server's stdout and stderr.
    """

    def __init__(
        self,
        model_path: str | Path,
        *,
        engine: EngineSpec,
        log_path: Path,
        served_model_name: str,
        load_format: str | None = None,
        tokenizer: str | Path | None = None,
        extra_env: dict[str, str] | None = None,
        trust_remote_code: bool = False,
    ) -> None:
        self.model_path = str(model_path)
        self.engine = engine
        self.log_path = Path(log_path)
        self.served_model_name = served_model_name
        self.load_format = load_format
        self.tokenizer = tokenizer
        self.extra_env = dict(extra_env or {})
        self.trust_remote_code = trust_remote_code
        self.port: int | None = None
        self.pid: int | None = None
        self.startup_s: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._watch: ReadyWatch | None = None

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise EngineError("server not started")
        return f"http://127.0.0.1:{self.port}"

    def command(self, port: int) -> list[str]:
        """The server's argument list (no shell)."""
        return [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", self.model_path,
            "--served-model-name", self.served_model_name,
            "--host", "127.0.0.1",
            "--port", str(port),
            *engine_cli_args(self.engine, load_format=self.load_format,
                             tokenizer=self.tokenizer, trust_remote_code=self.trust_remote_code),
        ]

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def start(self) -> VLLMServer:
        """Launch the server and wait until it serves; see :meth:`__enter__`."""
        self.launch()
        return self.wait()

    def launch(self) -> VLLMServer:
        """Start the server process and return at once (:meth:`wait` waits for it).

        Several servers launched before any is waited for start side by side: on a CPU
        host a start is mostly single-threaded imports, so two cores start two servers in
        about the time of one.
        """
        if self._proc is not None:
            raise EngineError("server already started")
        # A broken checkpoint fails here in milliseconds instead of after an engine start.
        check_checkpoint(self.model_path, weights=self.load_format != "dummy")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        port = free_port()
        t0 = time.monotonic()
        with open(self.log_path, "ab") as log:
            log.write(f"# evalkit: {' '.join(self.command(port))}\n".encode())
            log.flush()
            try:
                self._proc = subprocess.Popen(
                    self.command(port), stdout=log, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL, env=engine_env(self.engine, self.extra_env),
                    **popen_kwargs(self.engine),
                )
            except OSError as exc:
                raise EngineError(f"cannot start vLLM server ({exc.strerror or exc})") from None
        self.pid, self.port = self._proc.pid, port
        # Readiness is watched from now on, so startup_s is when the server first answered,
        # also when wait() is called late (servers launched side by side are waited for
        # one after another).
        self._watch = ReadyWatch(self._proc, self.base_url, t0, self.engine.startup_timeout_s,
                                 self._failure, name=f"vllm-ready-{port}")
        return self

    def wait(self) -> VLLMServer:
        """Wait until a launched server answers ``/health`` and ``/v1/models``; on failure
        the process group is stopped and the engine's reason raised (see :meth:`__enter__`).
        """
        if self._proc is None or self._watch is None:
            raise EngineError("server not launched")
        try:
            ready_s = self._watch.join()
        except BaseException:
            self.stop()
            raise
        self.startup_s = ready_s
        return self

    def _failure(self, returncode: int | None) -> EngineError:
        if returncode is None:
            # Stop first so the log holds everything the engine had to say.
            self.stop()
        return classify_failure(
            self.log_text(), what=f"vLLM server for '{self.served_model_name}'",
            model_path=self.model_path, hardware=hardware_label(self.engine.device),
            log_path=self.log_path, returncode=returncode,
        )

    def stop(self) -> None:
        """Stop the whole process group (SIGTERM, then SIGKILL); safe to call twice."""
        if self._proc is None:
            return
        proc, self._proc = self._proc, None
        stop_process_group(proc)

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def exit_description(self) -> str:
        """How the server process ended (``killed by SIGKILL``, ``exit code 1``), or
        ``running``/``stopped``."""
        return describe_exit(self._proc)

    def __enter__(self) -> VLLMServer:
        """Start ``python -m vllm.entrypoints.openai.api_server`` and wait for it (a server
        already started with :meth:`start` is taken over as it is).

        Raises:
            UnsupportedSchemeError: the engine has no kernel/scheme for the checkpoint's
                quantization on this hardware (its log line is the reason).
            EngineError: any other startup failure or a timeout, with the log's last lines.
        """
        if self._proc is not None:
            return self
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
