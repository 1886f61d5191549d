"""Exception hierarchy.

Every error a user can cause derives from :class:`EvalkitError`; the CLI prints its
message as one line per problem and exits non-zero, without a traceback.
"""

from __future__ import annotations


class EvalkitError(Exception):
    """Base class for all evalkit errors."""

    exit_code = 1


class ConfigError(EvalkitError):
    """A study file is malformed or describes something that cannot run.

    Attributes:
        problems: one human-readable line per problem, each naming file, key and what is allowed.
    """

    exit_code = 2

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class AssetError(EvalkitError):
    """A packaged model, dataset or preset is missing or corrupt."""


class RunDirError(EvalkitError):
    """A run directory is locked, not writable, or would be overwritten."""

    exit_code = 3


class ArchiveError(RunDirError):
    """A directory cannot be archived: not a run directory, in use, or a stage still running."""


class EngineError(EvalkitError):
    """An inference engine (vLLM server, offline engine, hf) failed to start or to serve."""


class CheckpointError(EngineError):
    """A checkpoint directory is missing, incomplete or corrupt (found before an engine starts)."""


class UnsupportedSchemeError(EngineError):
    """The engine has no kernel for this quantization scheme on this hardware.

    Attributes:
        reason: the engine's own words (log line) where available.
    """

    def __init__(self, scheme: str, hardware: str, reason: str):
        self.scheme, self.hardware, self.reason = scheme, hardware, reason
        super().__init__(f"{scheme} is not supported on {hardware}: {reason}")


class StageError(EvalkitError):
    """A pipeline stage failed; the executed notebook shows where."""

    exit_code = 4


class ClusterError(EvalkitError):
    """``--cluster`` cannot be honoured: an unknown cluster kind, Ray not installed, no
    cluster at the address, or a latency placement the cluster cannot satisfy."""


class Interrupted(EvalkitError):
    """The run was stopped by SIGINT/SIGTERM; finished units are kept."""

    exit_code = 130
