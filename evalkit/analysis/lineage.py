"""Which runs replace which: the ``supersedes.yaml`` manifest of an output root.

A newer run can make earlier ones obsolete (a re-measurement, a wider grid on the same model
shape). The output root holding them says so in one small committed file, so that nothing
has to be deleted to stop an old figure from answering::

    # outputs/reference/supersedes.yaml
    - run: hopper-llama8b-schemes-chat/r1      # STUDY/RUN_ID under this root
      supersedes: [hopper-llama8b-traffic/r1]   # runs it replaces, under this root
      why: five schemes and capacity at the SLO under the chat mix

The index (:mod:`evalkit.analysis.index`) marks every superseded run and names its
successor; the summary page (:mod:`evalkit.analysis.summary`) leaves superseded runs out of
its verdict card and answers and lists them under "other evidence". A missing file means
no run is superseded. Unknown keys, runs that are not under the root and a run that would
supersede itself are refused with one error naming the file.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from evalkit.core.errors import ConfigError

MANIFEST = "supersedes.yaml"


class Supersession(BaseModel):
    """One entry of the manifest: a run and the runs it replaces."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    run: str = Field(description="the newer run, STUDY/RUN_ID under the output root.")
    supersedes: list[str] = Field(min_length=1, description="the runs it replaces, "
                                  "STUDY/RUN_ID under the same root.")
    why: str = Field(min_length=1, description="one line: why the newer run replaces them.")


def superseded_runs(output_root: str | os.PathLike[str]) -> dict[str, tuple[str, str]]:
    """``{STUDY/RUN_ID: (successor STUDY/RUN_ID, why)}`` from the root's ``supersedes.yaml``
    (empty when the file is absent).

    Raises:
        ConfigError: the file is not a list of entries with ``run``, ``supersedes`` and
            ``why`` only, or names a run that is not under the root (or itself).
    """
    root = Path(output_root)
    path = root / MANIFEST
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or []
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not YAML ({exc})") from None
    if not isinstance(data, list):
        raise ConfigError(f"{path}: expected a list of entries (run, supersedes, why), "
                          f"got {type(data).__name__}")
    out: dict[str, tuple[str, str]] = {}
    problems = []
    for i, item in enumerate(data):
        try:
            e = Supersession.model_validate(item)
        except ValidationError as exc:
            for err in exc.errors():
                loc = ".".join(str(x) for x in err["loc"]) or "entry"
                problems.append(f"{path}: entry {i}: {loc}: {err['msg']} (allowed keys: run, "
                                "supersedes, why)")
            continue
        for name in (e.run, *e.supersedes):
            if not (root / name / "config.yaml").is_file():
                problems.append(f"{path}: entry {i}: no run {name!r} under {root} "
                                "(runs are named STUDY/RUN_ID)")
        if e.run in e.supersedes:
            problems.append(f"{path}: entry {i}: {e.run} cannot supersede itself")
        for old in e.supersedes:
            out[old] = (e.run, e.why)
    if problems:
        raise ConfigError(problems)
    return out


def superseded_by(run_path: str | os.PathLike[str]) -> tuple[str, str] | None:
    """The successor and reason of the run at ``run_path`` (``ROOT/STUDY/RUN_ID``) by its
    root's manifest, or None."""
    p = Path(run_path).resolve()
    return superseded_runs(p.parent.parent).get(f"{p.parent.name}/{p.name}")
