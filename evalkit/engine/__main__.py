"""``python -m evalkit.engine offline|logprobs --spec SPEC.json`` or ``... bench-serve ARGS``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from evalkit.engine.bench import bench_serve
from evalkit.engine.logprobs import logprobs_child
from evalkit.engine.offline import offline_child


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m evalkit.engine offline|logprobs --spec SPEC.json`` or ``... bench-serve ARGS``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench-serve"]:
        return bench_serve(argv[1:])
    ap = argparse.ArgumentParser(prog="python -m evalkit.engine")
    sub = ap.add_subparsers(dest="cmd", required=True)
    off = sub.add_parser("offline", help="offline batch latency (one engine, many points)")
    off.add_argument("--spec", type=Path, required=True, help="JSON spec from run_offline()")
    lp = sub.add_parser("logprobs", help="top-k prompt logprobs (one engine, many sequences)")
    lp.add_argument("--spec", type=Path, required=True,
                    help="JSON spec from prompt_topk_logprobs()")
    sub.add_parser("bench-serve", help="vLLM's `bench serve` client; arguments as vLLM's")
    args = ap.parse_args(argv)
    if args.cmd == "offline":
        offline_child(args.spec)
    elif args.cmd == "logprobs":
        logprobs_child(args.spec)
    return 0


if __name__ == "__main__":
    sys.exit(main())
