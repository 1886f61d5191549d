"""Quantize stage: one compressed-tensors checkpoint per study variant, built with llm-compressor.

Each quantized variant becomes a checkpoint directory under the engine cache::

    cache_dir()/checkpoints/<model>-<SCHEME LABEL>[-g<group>][-<method>]-<hash12>/
        config.json               with compressed-tensors' ``quantization_config``
        model.safetensors         compressed weights (absent for architecture presets)
        tokenizer files
        evalkit_quantize.json     key, timings, versions, settings

The hash (:func:`checkpoint_key`) covers everything that changes the checkpoint's bytes: the
model's provenance, scheme, method, group size, ignore list, calibration settings (for
methods that calibrate) and the llm-compressor / compressed-tensors versions. A checkpoint
with the same key is reused, never rebuilt or overwritten; a new one is built under a
temporary name and renamed into place while a lock on its name is held.

Methods:
    rtn: ``QuantizationModifier`` (round to nearest, no data).
    gptq: ``GPTQModifier``; for w8a8_int8 preceded by ``SmoothQuantModifier(0.8)``, as in
        llm-compressor's W8A8 example (``quantize.smoothquant: false`` leaves it out). The
        smoothing runs on its own first and must leave the loss of a few calibration
        passages unchanged (it only moves scale between a norm and the layers it feeds);
        where llm-compressor's mappings do not fit the architecture it does not (Gemma 3:
        perplexity 41 -> 1e11), and the variant fails before GPTQ with that measurement.
    awq: ``AWQModifier`` followed by ``QuantizationModifier`` (llm-compressor's AWQ recipe).

Architecture presets (random weights, loaded by vLLM with ``load_format="dummy"``) get a
checkpoint with no weights: the preset's ``config.json`` with the ``quantization_config``
that llm-compressor would write for the scheme, produced by the same compressed-tensors
calls on a weightless (meta-device) instance of the architecture.

The package imports no torch / llm-compressor at import time: the evaluation environment
reads its keys and records (a run's checkpoints are looked up with
:func:`evalkit.assets.checkpoints.checkpoint_for`).

Modules: :mod:`~evalkit.stages.quantize.checkpoints` (keys, names, sizes),
:mod:`~evalkit.stages.quantize.recipes` (schemes, recipes, calibration, device),
:mod:`~evalkit.stages.quantize.build` (building one checkpoint),
:mod:`~evalkit.stages.quantize.stage` (``run_stage``).
"""

from evalkit.stages.quantize.build import quantize_variant
from evalkit.stages.quantize.checkpoints import QuantizedCheckpoint, checkpoint_key
from evalkit.stages.quantize.recipes import build_recipe
from evalkit.stages.quantize.stage import run_stage

__all__ = ["QuantizedCheckpoint", "build_recipe", "checkpoint_key", "quantize_variant",
           "run_stage"]
