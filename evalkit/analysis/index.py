"""``OUTPUT_ROOT/index.html``: every run's report, newest first.

Links are relative to the index (the tree can be moved, copied or served as is) and point
at each run's ``html/04_report.html``, which an archived run keeps (:mod:`evalkit.core.archive`).
"""

from __future__ import annotations

import html
import os
from pathlib import Path
from urllib.parse import quote

import yaml

from evalkit.analysis.lineage import superseded_runs
from evalkit.analysis.load import load_report
from evalkit.analysis.summary import one_line
from evalkit.core.io import atomic_write_text, read_json
from evalkit.core.run import REPORT_HTML, Run, list_runs


def _row(run: Run, root: Path) -> dict[str, str]:
    cfg = yaml.safe_load((run.path / "config.yaml").read_text(encoding="utf-8")) or {}
    env = read_json(run.path / "env.json") if (run.path / "env.json").is_file() else {}
    model = cfg.get("model", {})
    model_name = model.get("name") or model.get("repo_id") or str(model.get("path", ""))
    device = cfg.get("engine", {}).get("device", "cpu")
    gpus = env.get("gpus") or []
    hardware = (gpus[0]["name"] + (f" x{len(gpus)}" if len(gpus) > 1 else "")
                if device == "cuda" and gpus else f"CPU: {env.get('cpu', '?')}")
    states = {k: v.get("state", "?") for k, v in run.units.stage_states().items()}
    state = ("failed" if "failed" in states.values() else
             "interrupted" if "interrupted" in states.values() else
             "running" if "running" in states.values() else
             "done" if states and all(s == "done" for s in states.values()) else "incomplete")
    # the root copy only where html/ lost the report (archived runs have no root copy)
    report = next((p for p in (run.path / REPORT_HTML, run.path / "report.html") if p.is_file()),
                  None)
    link = quote(Path(os.path.relpath(report, root)).as_posix()) if report is not None else ""
    return {
        "verdict": _verdict(run),
        "date": env.get("created_utc", run.run_id), "study": str(cfg.get("study", run.study)),
        "model": model_name, "hardware": hardware, "run_id": run.run_id, "state": state,
        "link": link, "variants": ", ".join(v.get("name", "") for v in cfg.get("variants", [])),
    }


def _verdict(run: Run) -> str:
    """The run's one-line verdict (:func:`evalkit.analysis.summary.one_line`), or why there is none."""
    if not (run.path / "records.parquet").is_file():
        return "no records yet"
    try:
        return one_line(load_report(run.config(), run))
    except Exception as exc:  # noqa: BLE001 -- one unreadable run must not hide the others
        # the page is moved and served as is: no absolute path in it
        why = str(exc).splitlines()[0].replace(str(run.path), ".") if str(exc) else ""
        return f"verdict unavailable ({type(exc).__name__}: {why})"


def answer_page(root: Path, page: str | os.PathLike[str] | None = None) -> Path | None:
    """The cross-study answer page the index links: ``page`` when given, else
    ``ROOT/summary.html`` (``evalkit summary``'s default), else the repository's
    ``docs/results.html`` two levels above the root (``outputs/reference``)."""
    if page is not None:
        return Path(page).resolve()
    for cand in (root / "summary.html", root.parent.parent / "docs" / "results.html"):
        if cand.is_file():
            return cand
    return None


def write_index(output_root: str | os.PathLike[str],
                answer: str | os.PathLike[str] | None = None) -> Path:
    """Write ``index.html`` under ``output_root`` listing all runs, newest first; runs the
    root's ``supersedes.yaml`` replaces are marked with their successor, and the answer page
    (:func:`answer_page`) is linked at the top."""
    root = Path(output_root).resolve()
    old = superseded_runs(root)
    rows = [_row(r, root) for r in list_runs(root)]
    for r in rows:
        after = old.get(f"{r['study']}/{r['run_id']}")
        if after:
            r["state"] = f"{r['state']}; superseded by {after[0]} ({after[1]})"
    # study and run id break ties, so the page is the same on every rebuild
    rows.sort(key=lambda r: (r["date"], r["study"], r["run_id"]), reverse=True)
    esc = html.escape
    body = "\n".join(
        "<tr><td>{date}</td><td>{study}</td><td>{model}</td><td>{hw}</td><td>{variants}</td>"
        "<td>{state}</td><td>{link}</td><td>{verdict}</td></tr>".format(verdict=esc(r["verdict"]),
            date=esc(r["date"]), study=esc(r["study"]), model=esc(r["model"]),
            hw=esc(r["hardware"]), variants=esc(r["variants"]), state=esc(r["state"]),
            link=(f'<a href="{esc(r["link"])}">{esc(r["run_id"])}</a>' if r["link"]
                  else esc(r["run_id"]) + " (no report)"),
        )
        for r in rows
    )
    ans = answer_page(root, answer)
    answer_link = (f'<p><b><a href="{esc(quote(Path(os.path.relpath(ans, root)).as_posix()))}">'
                   "The answer across these runs</a></b>: which scheme for which workload, "
                   "from current, valid data only.</p>" if ans is not None else "")
    n_old = (f"; {len(old)} superseded (marked: their points answer nothing)" if old else "")
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>evalkit runs</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}th{{background:#eee}}</style>
</head><body><h1>evalkit runs</h1>
{answer_link}<p>{len(rows)} run(s) under {esc(root.name)}/, newest first{n_old}.</p>
<table><thead><tr><th>date (UTC)</th><th>study</th><th>model</th><th>hardware</th>
<th>variants</th><th>state</th><th>report</th><th>verdict (valid points only)</th></tr></thead>
<tbody>
{body}
</tbody></table></body></html>
"""
    return atomic_write_text(root / "index.html", page)
