"""The base every section of a study file is built on (:mod:`evalkit.core.specs`,
:mod:`evalkit.core.traffic`)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

#: a positive integer field
PosInt = Annotated[int, Field(gt=0)]


class SpecModel(BaseModel):
    """A study-file section: an unknown key is an error (a typo never passes silently),
    values are frozen once validated, and defaults are validated like given values."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)
