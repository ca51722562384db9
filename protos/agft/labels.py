"""Instance labels, in one place: the rule for their names and values, and the labels
the server derives itself.

The agent checks a config against these rules, the server checks Hello and the SLO
API's selectors against them again: a selector can only ever name a label an instance
can carry.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

# Prometheus's label-name rule, shorter: labels travel to /metrics and Grafana too.
LABEL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
MAX_LABEL_VALUE = 255
MAX_LABELS = 32
# Set by the server from Hello, so a selector on them works without any config.
DERIVED_LABELS = ("node", "engine", "model")


def label_problem(name: str, value: str) -> str | None:
    """Why name = value is not a valid label (None: it is)."""
    if not LABEL_NAME.fullmatch(name):
        return (
            f"label name {name!r}: a letter or _ then letters, digits or _ (at most 63 characters)"
        )
    if not value or len(value) > MAX_LABEL_VALUE or not value.isprintable():
        return f"label {name}: its value is 1 to {MAX_LABEL_VALUE} printable characters"
    return None


def effective_labels(
    configured: Mapping[str, str], *, node: str, engine: str, model: str
) -> dict[str, str]:
    """An instance's labels: the derived ones, overridden by what its config says."""
    derived = {"node": node, "engine": engine}
    if model:
        derived["model"] = model
    return {**derived, **configured}
