"""One variant's vLLM OpenAI server, as the accuracy and latency stages use it.

A :class:`VariantSession` owns one :class:`evalkit.engine.VLLMServer` for one variant:
launch (without waiting), wait, restart after a crash, stop, its log, and ``beside``: the
variants whose servers are up, idle, on the same device meanwhile (``engine.parallel_starts``;
the latency records say so). Both stages start their servers through it, so a session the
accuracy stage opened can be handed to the latency stage's ``measure_on`` before it is
stopped: one engine start per variant for both stages, without either stage importing the
other (the notebook composes them).
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import Any

from evalkit.core.config import StudyConfig
from evalkit.core.run import Run
from evalkit.core.schemes import activation_mismatch
from evalkit.core.specs import Variant
from evalkit.engine import VLLMServer


def kernel_env(cfg: StudyConfig, variant: str) -> dict[str, str]:
    """The environment ``engine.kernel_override`` sets for ``variant``'s engine (``K=V``)."""
    override = cfg.engine.kernel_override.get(variant)
    return dict([override.split("=", 1)]) if override else {}


def kernel_words(prov: dict[str, Any]) -> str:
    """The kernels an engine's log names (:func:`evalkit.engine.provenance`), for a log line:
    its quantized linear kernels, and its MoE kernels where it has any."""
    words = prov.get("linear_kernels") or "no quantized linear kernel logged"
    return words + (f"; MoE: {prov['moe_kernels']}" if prov.get("moe_kernels") else "")


def warn_kernel_substitution(run: Run, stage: str, variant: Variant,
                             kernels: str | None) -> None:
    """A WARNING in the run log when vLLM ran ``variant`` with a scheme of other activations
    than its own (``kernels``: the engine log's linear-kernel lines), from any engine a stage
    starts (server or offline)."""
    mismatch = activation_mismatch(variant.scheme, kernels)
    if mismatch:
        run.log(f"{stage}: WARNING {variant.name}: {mismatch}")


class VariantSession:
    """One vLLM OpenAI server for one variant (see the module docstring).

    Attributes:
        variant: the variant served.
        checkpoint: its checkpoint directory.
        server: the :class:`~evalkit.engine.VLLMServer` (or a stand-in with its methods).
        beside: names of variants whose servers are up meanwhile.
    """

    def __init__(self, variant: Variant, checkpoint: Path, server: Any,
                 beside: list[str] | None = None) -> None:
        self.variant, self.checkpoint, self.server = variant, Path(checkpoint), server
        self.beside: list[str] = list(beside or [])

    @classmethod
    def open(cls, cfg: StudyConfig, run: Run, variant: Variant, checkpoint: Path, *,
             log_name: str, tokenizer: Path | None = None,
             load_format: str | None = None) -> VariantSession:
        """A session (not started) whose server logs to ``logs/<log_name>`` of the run."""
        server = VLLMServer(
            checkpoint, engine=cfg.engine, log_path=run.sub("logs", log_name),
            served_model_name=variant.name, load_format=load_format, tokenizer=tokenizer,
            extra_env=kernel_env(cfg, variant.name),
            trust_remote_code=cfg.model.trust_remote_code,
        )
        return cls(variant, checkpoint, server)

    # ---- what the server is
    @property
    def name(self) -> str:
        return self.variant.name

    @property
    def log_path(self) -> Path:
        return Path(self.server.log_path)

    @property
    def base_url(self) -> str:
        return str(self.server.base_url)

    @property
    def startup_s(self) -> float | None:
        return self.server.startup_s

    def log_text(self) -> str:
        return str(self.server.log_text())

    def alive(self) -> bool:
        return bool(self.server.alive())

    def exit_description(self) -> str:
        return str(self.server.exit_description())

    # ---- lifecycle
    def launch(self) -> VariantSession:
        """Start the server process and return at once (:meth:`wait` waits for it)."""
        self.server.launch()
        return self

    def wait(self) -> VariantSession:
        """Wait until a launched server serves (on failure it is stopped and the engine's
        reason raised)."""
        self.server.wait()
        return self

    def start(self) -> VariantSession:
        self.server.start()
        return self

    def restart(self) -> VariantSession:
        """Stop what is left of the server's process group and start it again."""
        self.server.stop()
        self.server.start()
        return self

    def stop(self) -> None:
        """Stop the whole process group; safe to repeat."""
        self.server.stop()

    def __enter__(self) -> VariantSession:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
