"""What a study runs on: packaged and local models, GGUF conversion, random-weight presets
(config.json only) and the local lm-eval task pack."""
