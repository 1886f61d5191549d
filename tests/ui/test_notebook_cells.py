"""The cells of the notebooks (evalkit.ui.cells) on records and stage results."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

import evalkit.ui.cells.evaluate as ek  # noqa: E402
from evalkit.core import records as rec  # noqa: E402
from evalkit.core.errors import StageError  # noqa: E402
from evalkit.core.run import open_run  # noqa: E402
from evalkit.core.units import Failure, StageResult, UnitKey  # noqa: E402
from evalkit.ui import figures  # noqa: E402
from evalkit.ui.cells import quantize as qcells  # noqa: E402
from evalkit.ui.cells.stage import StageContext  # noqa: E402

REF = Path(__file__).resolve().parents[2] / "outputs" / "reference"


def _lat(variant: str, status: str, note: str = "", workload: str = "chat"):
    return dict(variant=variant, scheme=variant, stage="latency", metric="ttft_ms", stat="p50",
                value=float("nan") if status != "ok" else 10.0, unit="ms",
                higher_is_better=False, status=status, workload=workload, mode="server",
                concurrency=1, request_rate=float("inf"), note=note)


def _key(variant: str) -> UnitKey:
    return UnitKey.latency(variant, "server", "chat", 1, float("inf"))


@pytest.fixture(scope="module")
def ctx():
    run = open_run(REF / "hopper-llama8b-claim" / "r1")
    cfg = run.config()
    return StageContext(cfg, run, "latency")


def _strict(ctx):
    cfg = ctx.cfg.model_copy(update={"latency": ctx.cfg.latency.model_copy(
        update={"unsupported": "error"})})
    return StageContext(cfg, ctx.run, "latency")


def _result(*rows, failures=()):
    return StageResult("latency", rec.make_records(list(rows), run_id="r1"), list(failures))


def test_check_stage_lists_failed_units_from_the_records(ctx):
    res = _result(_lat("base", "ok"), _lat("w4a16", "failed", "checkpoint gone"),
                  failures=[Failure(_key("w4a16"), "failed", "checkpoint gone")])
    with pytest.raises(StageError, match=r"^1 unit\(s\) failed \(others kept\): "
                                         r"w4a16 chat: checkpoint gone$"):
        ek.check_stage(res, ctx)


def test_unsupported_units_fail_only_when_the_study_says_error(ctx):
    res = _result(_lat("base", "ok"), _lat("w8a8", "unsupported", "no kernel"),
                  failures=[Failure(_key("w8a8"), "unsupported", "no kernel")])
    assert ctx.cfg.latency.unsupported == "record"
    ek.check_stage(res, ctx)  # recorded, not an error
    ek.check_stage(res)  # no context: as recorded
    with pytest.raises(StageError, match="unsupported: w8a8/server/chat/c1/rinf: no kernel"):
        ek.check_stage(res, _strict(ctx))


def test_failed_and_unsupported_listed_together(ctx):
    res = _result(_lat("w4a16", "failed", "oom"), _lat("w8a8", "unsupported", "no kernel"),
                  failures=[Failure(_key("w4a16"), "failed", "oom"),
                            Failure(_key("w8a8"), "unsupported", "no kernel")])
    with pytest.raises(StageError) as exc:
        ek.check_stage(res, _strict(ctx))
    msg = str(exc.value)
    assert msg.startswith("1 unit(s) failed (others kept): w4a16 chat: oom")
    assert "unsupported: w8a8/server/chat/c1/rinf: no kernel" in msg


def test_check_stage_passes_a_clean_result(ctx):
    ek.check_stage(_result(_lat("base", "ok"), _lat("w4a16", "ok")), _strict(ctx))


def test_show_cells_return_displayable_objects(ctx):
    res = StageResult("latency", ctx.run.records(), [])
    shown = ek.show_latency(res)
    html = shown.to_html()
    assert "TTFT p50 (ms)" in html and "w4a8_fp8" in html
    # a bare records DataFrame is accepted the same
    assert ek.show_latency(res.records).data.equals(shown.data)
    assert list(shown.data.columns[:4]) == ["variant", "mode", "workload", "concurrency"]
    empty = ek.show_accuracy(res)
    assert "accuracy was not measured" in empty._repr_markdown_()
    assert "_no variants_" in qcells.show_quantize(StageResult("quantize",
                                                            rec.empty_records()))._repr_markdown_()


def test_plot_latency_is_a_figure_with_its_legend(ctx):
    fig = ek.plot_latency(StageResult("latency", ctx.run.records()), metric="ttft_ms")
    assert isinstance(fig, figures.Figure)
    assert fig.name == "ttft_ms-curves"
    assert set(fig.legend) >= {"w4a16", "w4a8_fp8"}
    out = fig._repr_html_()
    assert out.startswith('<figure class="evalkit-figure" data-figure="ttft_ms-curves"')
    for entry in fig.legend:
        assert f">{entry}<" in fig.svg  # each legend entry is text in the SVG


def test_legend_entries_deduplicates_across_panels():
    fig, axes = plt.subplots(1, 2)
    for ax in axes:
        ax.plot([0, 1], [0, 1], label="a")
        ax.plot([0, 1], [1, 0], label="b")
        ax.legend()
    axes[1].plot([0, 1], [0.5, 0.5], label="c")
    axes[1].legend()
    assert figures.legend_entries(fig) == ["a", "b", "c"]
    plt.close(fig)


def test_every_cell_a_notebook_calls_is_in_its_cells_module():
    import importlib
    import json
    import re

    nbs = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("*.ipynb"))
    assert len(nbs) == 5
    seen = set()
    for nb in nbs:
        code = "\n".join("".join(c["source"]) for c in json.loads(nb.read_text())["cells"]
                         if c["cell_type"] == "code")
        mod = re.search(r"^import (evalkit\.ui\.cells\.\w+) as ek$", code, re.M)
        assert mod, f"{nb.name}: no 'import evalkit.ui.cells.X as ek'"
        cells = importlib.import_module(mod.group(1))
        called = set(re.findall(r"\bek\.(\w+)\(", code))
        seen |= called
        assert [n for n in sorted(called) if not callable(getattr(cells, n, None))] == [], nb.name
    assert {"open_stage", "check_stage", "show_header", "open_summary"} <= seen
