"""The environment every process evalkit starts or runs in gets: no model or dataset hub.

Weights and data come from packaged assets and the task pack; a library that tries the hub
at run time must fail fast instead of waiting on the network.
"""

from __future__ import annotations

import os

OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def set_offline_defaults() -> None:
    """Set :data:`OFFLINE_ENV` in this process where the user has not set the variables."""
    for k, v in OFFLINE_ENV.items():
        os.environ.setdefault(k, v)
