"""Write notebooks/01..05 from the cell lists below (keeps them thin and consistent).

Run with the eval environment's Python after editing this file; commit both.
"""

from pathlib import Path

import nbformat as nbf

KERNELS = {
    "evalkit-quantize": "evalkit quantize (llm-compressor)",
    "evalkit-eval": "evalkit eval (vLLM, lm-eval)",
}

PARAMS = '''# Parameters (papermill injects the run's values below this cell).
config_path = "../configs/demo-cpu.yaml"  # the study file
run_dir = None  # None: start a new run directory under the study's output_root'''

# Stages 01-03 also take the variants to work on: evalkit run --cluster runs each variant's
# stages in a worker of its own, then once more over all variants (which finds the work done).
STAGE_PARAMS = PARAMS + '''
variants = None  # None: every variant of the study; a list of names: only these'''

SUMMARY_PARAMS = '''# Parameters (evalkit summary injects its arguments below this cell).
runs = ["../outputs/reference"]  # run directories, or output roots holding runs
page = "../docs/results.html"  # where the rendered page goes (links to reports are relative to it)'''

NOTEBOOKS = {
    "01_quantize": ("evalkit-quantize", [
        ("md", "# 01 · Quantize\n\nQuantizes the study's model into every variant with "
               "llm-compressor and saves compressed-tensors checkpoints (cached by a hash of "
               "model, scheme, method and calibration, so a rerun reuses them). Records per "
               "variant: wall time, checkpoint size, bytes of weights, the `quantization_config`."),
        ("params", STAGE_PARAMS),
        ("code", "import evalkit.ui.cells.quantize as ek\n\nctx = ek.open_stage(config_path, run_dir, stage=\"quantize\", variants=variants)"),
        ("code", "ek.show_study(ctx)"),
        ("code", "model = ek.resolve_model(ctx)"),
        ("code", "result = ek.quantize(ctx)"),
        ("code", "ek.show_quantize(result)"),
        ("code", "ek.check_stage(result, ctx)"),
    ]),
    "02_accuracy": ("evalkit-eval", [
        ("md", "# 02 · Accuracy\n\nRuns lm-eval on every variant with identical settings "
               "(tasks, few-shot, limit, seed, chat template, batch policy), through vLLM where it "
               "has a kernel for the scheme on this hardware, else through lm-eval's `hf` "
               "backend. Deltas against base are paired (same documents), with 95% "
               "paired-bootstrap intervals and McNemar p-values.\n\nWith a `quality` section "
               "it then compares every variant's next-token distributions with the base's "
               "on held-out text: KL divergence, top-1 agreement and perplexity, with "
               "bootstrap intervals over sequences."),
        ("params", STAGE_PARAMS),
        ("code", "import evalkit.ui.cells.evaluate as ek\n\nctx = ek.open_stage(config_path, run_dir, stage=\"accuracy\", variants=variants)"),
        ("code", "result = ek.accuracy(ctx)"),
        ("code", "ek.show_accuracy(result)"),
        ("code", "ek.plot_accuracy(result)"),
        ("code", "quality = ek.quality(ctx)"),
        ("code", "ek.show_quality(quality)"),
        ("code", "ek.check_stage(result, ctx)\nek.check_stage(quality, ctx)"),
    ]),
    "03_latency": ("evalkit-eval", [
        ("md", "# 03 · Latency\n\nStarts a vLLM OpenAI server per variant on 127.0.0.1 and "
               "drives it with vLLM's own benchmark client (`vllm bench serve`) over the "
               "workloads × concurrency grid; optional offline batches through `vllm.LLM`. "
               "TTFT, TPOT = (E2E − TTFT)/(output tokens − 1), ITL and E2E follow vLLM's "
               "definitions; the server's `/metrics` histograms are read before and after each "
               "point as a cross-check."),
        ("params", STAGE_PARAMS),
        ("code", "import evalkit.ui.cells.evaluate as ek\n\nctx = ek.open_stage(config_path, run_dir, stage=\"latency\", variants=variants)"),
        ("code", "result = ek.latency(ctx)"),
        ("code", "ek.show_latency(result)"),
        ("code", "ek.plot_latency(result, metric=\"ttft_ms\")"),
        ("code", "ek.plot_latency(result, metric=\"tpot_ms\")"),
        ("code", "ek.check_stage(result, ctx)"),
    ]),
    "04_report": ("evalkit-eval", [
        ("params", PARAMS),
        ("code", "import evalkit.ui.cells.report as ek\n\nctx = ek.open_stage(config_path, run_dir, stage=\"report\")\nreport = ek.build_report(ctx)"),
        ("code", "ek.show_header(report)"),
        ("code", "ek.show_verdict(report)"),
        ("code", "ek.show_answer(report)"),
        ("code", "ek.show_context(report)"),
        ("code", "ek.plot_rate_curves(report, metric=\"ttft_ms\")"),
        ("code", "ek.plot_rate_curves(report, metric=\"tpot_ms\")"),
        ("code", "ek.show_headline(report)"),
        ("code", "ek.plot_load_curves(report, metric=\"ttft_ms\")"),
        ("code", "ek.plot_load_curves(report, metric=\"tpot_ms\")"),
        ("code", "ek.plot_load_curves(report, metric=\"e2el_ms\")"),
        ("code", "ek.plot_tails(report, metric=\"ttft_ms\")"),
        ("code", "ek.plot_tails(report, metric=\"tpot_ms\")"),
        ("code", "ek.plot_throughput(report)"),
        ("code", "ek.show_goodput(report)"),
        ("code", "ek.plot_quality_vs_speed(report, metric=\"ttft_ms\")"),
        ("code", "ek.plot_quality_vs_speed(report, metric=\"tpot_ms\")"),
        ("code", "ek.plot_accuracy(report.records)"),
        ("code", "ek.show_quality_panel(report)"),
        ("code", "ek.show_claims(report)"),
        ("code", "ek.plot_claim_maps(report)"),
        ("code", "ek.show_roofline(report)"),
        ("code", "ek.show_changes(report)"),
        ("md", "## Appendix\n\nLong tables, folded: click a title to open it."),
        ("code", "ek.show_points(report)"),
        ("code", "ek.show_rate_points(report)"),
        ("code", "ek.show_other_evidence(report)"),
        ("code", "ek.show_invalid(report)"),
        ("code", "ek.show_accuracy_detail(report.records)"),
        ("code", "ek.show_crosscheck(report)"),
        ("code", "ek.show_environment(report)"),
    ]),
    "05_summary": ("evalkit-eval", [
        ("params", SUMMARY_PARAMS),
        ("code", "import evalkit.ui.cells.summary as ek\n\nsummary = ek.open_summary(runs, page)"),
        ("code", "ek.show_verdict_card(summary)"),
        ("code", "ek.show_summary_header(summary)"),
        ("code", "ek.show_summary_capacity(summary)"),
        ("code", "ek.show_summary_answer(summary)"),
        ("code", "ek.plot_summary_gains(summary)"),
        ("code", "ek.show_summary_table(summary)"),
        ("code", "ek.show_other_evidence(summary)"),
        ("code", "ek.show_summary_runs(summary)"),
        ("code", "ek.show_summary_definitions(summary)"),
    ]),
}


def build(name: str, kernel: str, cells: list[tuple[str, str]]) -> nbf.NotebookNode:
    nb = nbf.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": kernel, "display_name": KERNELS[kernel],
                                 "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    for kind, src in cells:
        if kind == "md":
            nb.cells.append(nbf.v4.new_markdown_cell(src))
        elif kind == "params":
            c = nbf.v4.new_code_cell(src)
            c.metadata["tags"] = ["parameters"]
            nb.cells.append(c)
        else:
            nb.cells.append(nbf.v4.new_code_cell(src))
    for i, c in enumerate(nb.cells):
        c["id"] = f"{name[:2]}-{i:02d}"
    return nb


if __name__ == "__main__":
    out = Path(__file__).resolve().parent.parent / "notebooks"
    for name, (kernel, cells) in NOTEBOOKS.items():
        nbf.write(build(name, kernel, cells), out / f"{name}.ipynb")
        print(out / f"{name}.ipynb")
