"""GGUF files: metadata, and their conversion into Hugging Face checkpoints (dequantized to
bfloat16) with the tokenizer's special-token behaviour checked."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import mmap
import struct
import time
from pathlib import Path
from typing import Any

from evalkit.assets.resolved import ASSET_FILE, CHECKPOINT_DTYPE, CONVERTER_VERSION, say_progress
from evalkit.core.cache import make_readable
from evalkit.core.errors import AssetError
from evalkit.core.io import atomic_dir, atomic_write_json, file_lock, read_json

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
            length = read("<Q")
            pos += length
            return bytes(mm[pos - length:pos]).decode("utf-8", errors="replace")

        def skip(vtype: int) -> None:
            nonlocal pos
            if vtype == _GGUF_STRING:
                length = read("<Q")  # read() moves pos: take the length before adding it
                pos += length
            elif vtype == _GGUF_ARRAY:
                etype, count = read("<I"), read("<Q")
                if etype in _GGUF_SCALARS:
                    pos += struct.calcsize(_GGUF_SCALARS[etype]) * count
                elif etype == _GGUF_STRING:  # vocabularies: a tight loop, no calls per item
                    cursor, unpack = pos, struct.Struct("<Q").unpack_from
                    for _ in range(count):
                        cursor += 8 + unpack(mm, cursor)[0]
                    pos = cursor
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


def apply_special_token_flags(tok: Any, gguf: Path) -> dict[str, bool]:
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


def check_special_tokens(tok_dir: Path, flags: dict[str, bool]) -> None:
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
    say_progress(progress, f"  reading tokenizer from {gguf.name} (the slow part: 1-2 min)")
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    token_flags = apply_special_token_flags(tok, gguf)
    t_tok = time.perf_counter() - t0
    say_progress(progress, f"  tokenizer done in {t_tok:.0f} s; dequantizing weights")
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
    state = {name: tensor.to(dtype) for name, tensor in src.state_dict().items()}
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
    check_special_tokens(out, token_flags)
    t_total = time.perf_counter() - t0
    say_progress(progress, f"  saved {CHECKPOINT_DTYPE} checkpoint in {t_total:.0f} s")
    n_params = sum(param.numel() for param in model.parameters())
    return {
        "architecture": architectures[0], "model_type": model_type, "dtype": CHECKPOINT_DTYPE,
        "parameters": n_params, "vocab_size": getattr(config, "vocab_size", None),
        "tokenizer_flags": token_flags,
        "tokenizer_s": round(t_tok, 2), "dequantize_s": round(t_load, 2),
        "convert_total_s": round(t_total, 2),
        "converter_version": CONVERTER_VERSION,
        "tools": {dist: _dist_version(dist) for dist in ("transformers", "torch", "gguf")},
    }


def _dist_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def checkpoint_from_gguf(gguf: Path, final: Path, provenance: dict[str, Any],
                          *, progress: bool) -> tuple[Path, dict[str, Any]]:
    """Return ``final`` (converting into it first unless a finished conversion is there)."""
    asset = final / ASSET_FILE
    if asset.is_file():
        return final, read_json(asset)
    with file_lock(final.parent / f".{final.name}.lock", what=f"conversion of {gguf.name}",
                   blocking=True):
        if asset.is_file():  # another process finished while this one waited
            return final, read_json(asset)
        say_progress(progress, f"converting {gguf} -> {final}")
        with atomic_dir(final) as tmp:
            facts = convert_gguf(gguf, tmp, progress=progress)
            record = {**provenance, "conversion": facts,
                      "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            atomic_write_json(tmp / ASSET_FILE, record)
            make_readable(tmp)
    return final, read_json(asset)


def gguf_quant_type(path: Path) -> str | None:
    """The GGUF file's declared quantization type (general.file_type), if it has one."""
    from gguf import LlamaFileType  # noqa: PLC0415

    value = gguf_metadata(path, ("general.file_type",)).get("general.file_type")
    if value is None:
        return None
    try:
        return LlamaFileType(int(value)).name.removeprefix("MOSTLY_")
    except ValueError:
        return f"file_type {value}"


