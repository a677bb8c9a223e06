"""Metric names as the store holds them, and as the code knows them.

MLflow's chart views make a section of each prefix before a `/`, sorted by name, and put the metrics
without one last ("Model metrics"). So the scores a researcher opens a run for are stored in
sections: each extra evaluation set's under `extra/` (`extra/site_b_auc`), the test split's under
`test/` (`test/auc`, `test/bn_auc`) and the final model's validation scores under `val/` (`val/auc`);
per-epoch curves, calibration internals and bookkeeping keep flat names and come after them. The
code names them as runs made before did (`test_auc`, `final_val_auc`, `extra_site_b_auc`): `stored`
maps a code name to the store's, `in_code` either name back, so runs of both kinds read alike
(docs/tracking.md lists the mapping).
"""

from __future__ import annotations

from collections.abc import Mapping

# Code prefix -> store section, in the order they are tried.
SECTIONS = {"final_val_": "val/", "test_": "test/", "extra_": "extra/"}


def stored(name: str) -> str:
    """The name a final metric is logged under: `test_auc` -> `test/auc`."""
    for prefix, section in SECTIONS.items():
        if name.startswith(prefix):
            return section + name.removeprefix(prefix)
    return name


def in_code(name: str) -> str:
    """The code's name of a logged metric, new or old: `test/auc` and `test_auc` -> `test_auc`."""
    for prefix, section in SECTIONS.items():
        if name.startswith(section):
            return prefix + name.removeprefix(section)
    return name


def metrics_in_code(metrics: Mapping[str, float]) -> dict[str, float]:
    """A run's metrics (run.data.metrics) by their code names."""
    return {in_code(name): value for name, value in metrics.items()}
