"""evalkit.engine.options: what an engine's environment pins (CPU cores) and passes."""

from __future__ import annotations

from evalkit.core.specs import EngineSpec


def test_cpu_engines_run_on_the_cores_other_work_leaves_free(monkeypatch):
    from evalkit.engine import options

    monkeypatch.setattr(options, "_free_cores", lambda: [0])  # one of two cores busy elsewhere
    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND", raising=False)
    env = options.engine_env(EngineSpec(device="cpu"))
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == "0" and env["OMP_NUM_THREADS"] == "1"
    assert options.engine_cores(EngineSpec(device="cuda")) is None
    monkeypatch.setattr(options, "_free_cores", lambda: None)  # all free: vLLM's own binding
    assert "VLLM_CPU_OMP_THREADS_BIND" not in options.engine_env(EngineSpec(device="cpu"))


def _args(engine: EngineSpec) -> tuple[list[str], dict]:
    from evalkit.engine.options import engine_cli_args, engine_kwargs

    return (engine_cli_args(engine, load_format=None, tokenizer=None, trust_remote_code=False),
            engine_kwargs(engine, load_format=None, tokenizer=None, trust_remote_code=False))


def _flag(cli: list[str], name: str) -> str:
    return cli[cli.index(name) + 1]


def test_parallel_sizes_and_executor_reach_server_and_offline_engine():
    # two nodes of 4 GPUs: tensor parallel within a node, a pipeline stage per node, Ray
    e = EngineSpec(device="cuda", tensor_parallel_size=4, pipeline_parallel_size=2,
                   executor="ray")
    cli, kw = _args(e)
    assert (_flag(cli, "--tensor-parallel-size"), _flag(cli, "--pipeline-parallel-size"),
            _flag(cli, "--distributed-executor-backend")) == ("4", "2", "ray")
    assert (kw["tensor_parallel_size"], kw["pipeline_parallel_size"],
            kw["distributed_executor_backend"]) == (4, 2, "ray")
    assert e.gpus_per_engine == 8
    # one machine, vLLM's choice of executor (mp for several GPUs): nothing passed for it
    cli, kw = _args(EngineSpec(device="cuda", pipeline_parallel_size=2))
    assert _flag(cli, "--pipeline-parallel-size") == "2" and kw["pipeline_parallel_size"] == 2
    assert "--distributed-executor-backend" not in cli and "distributed_executor_backend" not in kw
    cli, kw = _args(EngineSpec(device="cuda", tensor_parallel_size=2, executor="mp"))
    assert _flag(cli, "--distributed-executor-backend") == "mp"
    # the defaults say 1 x 1 explicitly
    cli, kw = _args(EngineSpec())
    assert (_flag(cli, "--tensor-parallel-size"), _flag(cli, "--pipeline-parallel-size")) == ("1", "1")
    assert (kw["tensor_parallel_size"], kw["pipeline_parallel_size"]) == (1, 1)


def test_parallel_arguments_parse_in_installed_vllm(tmp_path):
    """vLLM's own argument parser and EngineArgs take what evalkit passes (server argv and
    ``vllm.LLM`` keywords) and read the same sizes and executor back."""
    import dataclasses

    import pytest

    pytest.importorskip("vllm")
    from vllm.engine.arg_utils import EngineArgs
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    e = EngineSpec(device="cuda", tensor_parallel_size=4, pipeline_parallel_size=2,
                   executor="ray")
    cli, kw = _args(e)
    parsed = EngineArgs.from_cli_args(
        EngineArgs.add_cli_args(FlexibleArgumentParser()).parse_args(["--model", str(tmp_path), *cli]))
    fields = {f.name for f in dataclasses.fields(EngineArgs)}
    assert set(kw) <= fields, set(kw) - fields  # every vllm.LLM keyword is an engine arg
    from_kw = EngineArgs(model=str(tmp_path), **kw)  # a local path: no hub look-up
    for args in (parsed, from_kw):
        assert (args.tensor_parallel_size, args.pipeline_parallel_size,
                args.distributed_executor_backend) == (4, 2, "ray")
