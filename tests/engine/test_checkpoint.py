"""evalkit.engine.checkpoint: a checkpoint's files checked before an engine starts on it."""

from __future__ import annotations

import json

import pytest

from evalkit.engine.checkpoint import check_checkpoint


def test_check_checkpoint_finds_broken_weights_without_an_engine(tmp_path):
    import struct

    from evalkit.core.errors import CheckpointError

    d = tmp_path / "ck"
    with pytest.raises(CheckpointError, match="does not exist"):
        check_checkpoint(d)
    d.mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        check_checkpoint(d)
    (d / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt JSON"):
        check_checkpoint(d)
    (d / "config.json").write_text("{}")
    check_checkpoint(d, weights=False)  # config-only (dummy weights) is fine
    with pytest.raises(CheckpointError, match="no weight files"):
        check_checkpoint(d)
    header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()
    blob = struct.pack("<Q", len(header)) + header + b"\0" * 16
    (d / "model.safetensors").write_bytes(blob)
    check_checkpoint(d)
    (d / "model.safetensors").write_bytes(blob[:-4])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        check_checkpoint(d)
    (d / "model.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        check_checkpoint(d)
    (d / "model.safetensors").unlink()
    (d / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"w": "model-00001-of-00002.safetensors"}}))
    with pytest.raises(CheckpointError, match="named in the index is missing"):
        check_checkpoint(d)
