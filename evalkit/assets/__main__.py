"""``python -m evalkit.assets``: list and prepare the packaged models."""

from __future__ import annotations

import argparse
import sys

from evalkit.assets import taskpack
from evalkit.assets.models import prepare
from evalkit.assets.packaged import PACKAGED_MODELS
from evalkit.assets.presets import list_presets, preset_config
from evalkit.core.cache import cache_dir
from evalkit.core.errors import EvalkitError
from evalkit.core.specs import ModelSpec


def main(argv: list[str] | None = None) -> int:
    """``python -m evalkit.assets list`` / ``prepare NAME...`` (packaged models or presets)."""
    parser = argparse.ArgumentParser(prog="python -m evalkit.assets",
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
