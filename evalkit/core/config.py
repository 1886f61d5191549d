"""Study configuration: one YAML file per study, validated by pydantic models.

Every model rejects unknown keys (``extra="forbid"``) and every field says what it means.
:func:`read_study` turns any problem of the file itself -- YAML syntax, schema, cross-field
rules -- into a :class:`ConfigError` with one line per problem: ``FILE: KEY: what is wrong;
what is allowed``. :func:`evalkit.preflight.load_study` adds the checks that need the file
system, the packaged assets and the task pack (paths, task names, scheme/hardware
combinations known not to run).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    Field,
    ValidationError,
    model_validator,
)

from evalkit.core.errors import ConfigError
from evalkit.core.schemes import SCHEMES
from evalkit.core.spec_base import SpecModel
from evalkit.core.specs import (
    NAME_RE,
    AccuracySpec,
    Claim,
    EngineSpec,
    LatencySpec,
    ModelSpec,
    QualitySpec,
    QuantizeSpec,
    ReportSpec,
    Variant,
)

__all__ = ["StudyConfig", "parse_study", "read_study"]


class StudyConfig(SpecModel):
    """A whole study: model, variants, stages and where results go."""

    study: str = Field(pattern=NAME_RE, description="study name; run directories nest under it.")
    description: str = Field("", description="what the study asks, for the report.")
    model: ModelSpec = Field(description="the model.")
    variants: tuple[Variant, ...] = Field(min_length=1, description="base and quantized variants.")
    quantize: QuantizeSpec = Field(default_factory=QuantizeSpec, description="llm-compressor.")
    accuracy: AccuracySpec | None = Field(None, description="lm-eval settings (None: skip).")
    latency: LatencySpec | None = Field(None, description="latency sweep (None: skip).")
    quality: QualitySpec | None = Field(
        None, description="KL divergence / top-1 agreement vs base on held-out text "
        "(None: skip).")
    engine: EngineSpec = Field(default_factory=EngineSpec, description="vLLM options.")
    claims: tuple[Claim, ...] = Field((), description="speed claims to check.")
    report: ReportSpec = Field(default_factory=ReportSpec, description="report options.")
    output_root: Path = Field(Path("outputs"), description="runs go to OUTPUT_ROOT/STUDY/RUN_ID.")

    @property
    def base_variant(self) -> Variant | None:
        """The unquantized variant deltas are paired against: the first variant of scheme
        ``base`` (a second one, e.g. for an A/A check of the same model, is compared like
        any other variant); None without one."""
        return next((v for v in self.variants if SCHEMES[v.scheme].is_base), None)

    @model_validator(mode="after")
    def _cross(self) -> StudyConfig:
        names = [v.name for v in self.variants]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"variant names must be unique; repeated: {', '.join(dup)}")
        known = set(names)
        for c in self.claims:
            for key in ("variant", "reference"):
                if getattr(c, key) not in known:
                    raise ValueError(
                        f"claim '{c.name}' {key} '{getattr(c, key)}' is not a variant; "
                        f"variants: {', '.join(names)}"
                    )
        ref = self.report.reference_variant
        if ref is not None and ref not in known:
            raise ValueError(f"report.reference_variant '{ref}' is not a variant: {names}")
        for vname in self.engine.kernel_override:
            if vname not in known:
                raise ValueError(f"engine.kernel_override names unknown variant '{vname}'")
        if self.latency and self.report.workload:
            wl = [w.name for w in self.latency.workloads]
            if self.report.workload not in wl:
                raise ValueError(f"report.workload '{self.report.workload}' not in {wl}")
        if self.latency and self.report.concurrency:
            levels = sorted({c for w in self.latency.workloads for m in self.latency.modes
                             for c in self.latency.levels(w, m)})
            if self.report.concurrency not in levels:
                raise ValueError(
                    f"report.concurrency {self.report.concurrency} is not a measured level; "
                    f"allowed: {levels}"
                )
        if not self.model.weights_are_real and self.quality is not None:
            raise ValueError(
                "quality needs real weights; model.source=preset loads random weights "
                "(speed only): remove 'quality' or use a real model"
            )
        if self.quality is not None and self.base_variant is None:
            raise ValueError("quality compares every variant with the base: add a variant "
                             "with scheme: base or remove 'quality'")
        if not self.model.weights_are_real and self.accuracy is not None:
            raise ValueError(
                "accuracy needs real weights; model.source=preset loads random weights "
                "(speed only): remove 'accuracy' or use a real model"
            )
        return self

    def variant(self, name: str) -> Variant:
        for v in self.variants:
            if v.name == name:
                return v
        raise ConfigError(f"no variant '{name}' in study {self.study}")


# --------------------------------------------------------------------------------------
# loading and semantic checks


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif str(part).startswith("function-") or part in ("literal",):
            continue
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _format_pydantic(path: str, exc: ValidationError) -> list[str]:
    lines = []
    errors = exc.errors()
    locs = [tuple(e["loc"]) for e in errors]
    for err in errors:
        # a bad item also makes its tuple "too short" after validation: report the item only
        if err["type"] == "too_short" and any(
            other[: len(err["loc"])] == tuple(err["loc"]) and len(other) > len(err["loc"])
            for other in locs
        ):
            continue
        loc = tuple(p for p in err["loc"] if not str(p).startswith(("function-", "constrained")))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (not allowed here; check spelling against the README)"
        elif err["type"] == "literal_error":
            msg = f"{msg} (got {err.get('input')!r})"
        elif err["type"] == "missing":
            msg = "required key is missing"
        lines.append(f"{path}: {_loc(loc)}: {msg}")
    return lines


def parse_study(data: Any, path: str = "<config>") -> StudyConfig:
    """Validate a mapping as a study; raise ConfigError with one line per problem."""
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the file must hold a mapping of keys, got {type(data).__name__}")
    try:
        return StudyConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_pydantic(path, exc)) from None


def read_study(path: str | os.PathLike[str]) -> StudyConfig:
    """Read and validate a study file against the schema (no file-system or asset checks:
    :func:`evalkit.preflight.load_study` adds those).

    Raises:
        ConfigError: one line per problem.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such study file")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
        raise ConfigError(f"{p}: YAML syntax error at {where}: {getattr(exc, 'problem', exc)}") from None
    return parse_study(data, str(p))
