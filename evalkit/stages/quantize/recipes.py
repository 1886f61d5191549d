"""llm-compressor schemes and recipes per variant, calibration data, the quantization device."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from evalkit.assets import taskpack
from evalkit.core.errors import ConfigError
from evalkit.core.schemes import SCHEMES
from evalkit.core.specs import Calibration, QuantizeSpec, Variant
from evalkit.stages.quantize.checkpoints import SMOOTHQUANT_STRENGTH, uses_smoothquant

# --------------------------------------------------------------------------------------
# scheme, recipe, calibration


def build_scheme(variant: Variant):
    """The compressed-tensors ``QuantizationScheme`` for a variant (preset + group override).

    Raises:
        ConfigError: the scheme has no llm-compressor preset (base).
    """
    from compressed_tensors.quantization import preset_name_to_scheme

    scheme = SCHEMES[variant.scheme]
    if scheme.llmc_preset is None:
        raise ConfigError(f"variant {variant.name}: scheme {scheme.name} is not quantized")
    qscheme = preset_name_to_scheme(scheme.llmc_preset, ["Linear"])
    gs = variant.group_size
    if gs is not None and qscheme.weights is not None and qscheme.weights.group_size != gs:
        qscheme = qscheme.model_copy(
            update={"weights": qscheme.weights.model_copy(update={"group_size": gs})}
        )
    return qscheme


def build_recipe(variant: Variant, qspec: QuantizeSpec) -> list[Any]:
    """llm-compressor modifiers for the variant's method (see module docstring)."""
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier

    groups = {"group_0": build_scheme(variant)}
    ignore = list(qspec.ignore)
    if variant.method == "rtn":
        return [QuantizationModifier(targets=["Linear"], config_groups=groups, ignore=ignore)]
    if variant.method == "gptq":
        recipe: list[Any] = []
        if uses_smoothquant(variant, qspec):
            from llmcompressor.modifiers.transform.smoothquant import SmoothQuantModifier

            recipe.append(SmoothQuantModifier(smoothing_strength=SMOOTHQUANT_STRENGTH))
        recipe.append(GPTQModifier(targets=["Linear"], config_groups=groups, ignore=ignore))
        return recipe
    if variant.method == "awq":
        from llmcompressor.modifiers.transform.awq import AWQModifier

        return [AWQModifier(),
                QuantizationModifier(targets=["Linear"], config_groups=groups, ignore=ignore)]
    raise ConfigError(
        f"variant {variant.name}: method '{variant.method}' cannot quantize; "
        "allowed: rtn, gptq, awq"
    )


def load_calibration_texts(cal: Calibration) -> tuple[list[str], str]:
    """Calibration texts and a description of where they came from.

    Raises:
        ConfigError: the file is missing, unreadable or holds fewer texts than asked for.
    """
    if cal.dataset.startswith("taskpack:"):
        texts = list(taskpack.calibration_texts(cal.num_samples, cal.seed))
        where = f"{cal.dataset} (taskpack.calibration_texts, seed {cal.seed})"
    else:
        p = Path(cal.dataset)
        try:
            raw = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(
                f"quantize.calibration.dataset: cannot read '{p}' ({exc.strerror or exc})"
            ) from None
        if p.suffix == ".jsonl":
            pool = []
            for i, line in enumerate(raw.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    raise ConfigError(
                        f"quantize.calibration.dataset: {p}:{i} is not JSON; allowed: one "
                        "object per line with a 'text' field"
                    ) from None
                if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
                    raise ConfigError(
                        f"quantize.calibration.dataset: {p}:{i} has no string 'text' field"
                    )
                pool.append(rec["text"])
        else:
            pool = [line for line in raw.splitlines() if line.strip()]
        if len(pool) < cal.num_samples:
            raise ConfigError(
                f"quantize.calibration.dataset: '{p}' holds {len(pool)} texts, "
                f"num_samples asks for {cal.num_samples}; allowed: num_samples <= {len(pool)}"
            )
        texts = random.Random(cal.seed).sample(pool, cal.num_samples)
        where = f"{p} ({len(pool)} texts, {cal.num_samples} drawn with seed {cal.seed})"
    if len(texts) < cal.num_samples:
        raise ConfigError(
            f"quantize.calibration: {cal.dataset} gave {len(texts)} texts, "
            f"num_samples asks for {cal.num_samples}"
        )
    return texts, where


def calibration_dataset(tokenizer, cal: Calibration) -> tuple[Any, dict[str, Any]]:
    """Tokenized calibration set: one sequence per text, truncated to ``seq_len`` tokens.

    Texts are not packed: like llm-compressor's examples, each sample is one document
    cut at ``seq_len``; the token counts actually used are returned for the metadata.
    """
    from datasets import Dataset

    texts, where = load_calibration_texts(cal)
    enc = tokenizer(texts, truncation=True, max_length=cal.seq_len, add_special_tokens=True)
    lengths = [len(ids) for ids in enc["input_ids"]]
    ds = Dataset.from_dict({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})
    info = {
        **cal.model_dump(mode="json"), "source": where, "samples": len(lengths),
        "tokens_total": int(sum(lengths)), "tokens_min": min(lengths), "tokens_max": max(lengths),
        "tokens_mean": sum(lengths) / len(lengths),
    }
    return ds, info


def resolve_device(qspec: QuantizeSpec) -> str:
    """The device llm-compressor will run on for ``qspec.device``.

    llm-compressor always calibrates on the accelerator when one is visible, so the
    choice can only be checked, not forced, here.

    Raises:
        ConfigError: cuda asked for but absent, or cpu asked for while a GPU is visible.
    """
    import torch

    has_cuda = torch.cuda.is_available()
    if qspec.device == "auto":
        return "cuda" if has_cuda else "cpu"
    if qspec.device == "cuda" and not has_cuda:
        raise ConfigError(
            "quantize.device: cuda requested but torch sees no GPU; allowed: auto, cpu"
        )
    if qspec.device == "cpu" and has_cuda:
        raise ConfigError(
            "quantize.device: cpu requested but a GPU is visible and llm-compressor uses it; "
            "allowed: auto or cuda (or hide GPUs with CUDA_VISIBLE_DEVICES='')"
        )
    return qspec.device


def no_accelerator() -> bool:
    import torch

    return not torch.accelerator.is_available()


