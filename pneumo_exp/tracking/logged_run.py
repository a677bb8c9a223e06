"""What a logged run tells whoever scores new images with its model (predict): the threshold it chose
on validation, how its source images were made, and validation as each adaptation saw it."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from pneumo_exp import UserError
from pneumo_exp.tracking import names

if TYPE_CHECKING:
    from pneumo_exp.evaluation import adaptation


@dataclass(frozen=True)
class RunFacts:
    """What predict reads back from the model's run."""
    run_id: str
    threshold: float  # chosen on validation
    source_size: int  # tag source_image_size: 28 for PneumoniaMNIST; 0 for image folders
    metrics: dict[str, float]
    params: dict[str, str]

    @property
    def min_images(self) -> int:
        """The fewest images the run's evaluation adapts a set of (eval.min_images, 50 by default)."""
        return int(self.params.get("eval.min_images", 50))

    def check_set_size(self, count: int, adapt_method: str) -> None:
        """Label-free adaptation estimates a set's statistics, which a handful of images cannot give:
        it takes no fewer than the run's own evaluation adapts (min_images)."""
        if count < self.min_images:
            raise UserError(f"--adapt {adapt_method} adapts to a set of images and got {count} "
                            f"image{'s' * (count != 1)}, fewer than the {self.min_images} it needs (the "
                            "run's eval.min_images): drop --adapt, or pass more images of the same site")

    def operating_points(self, adapt_method: str) -> dict[str, adaptation.OperatingPoint]:
        """Validation as the run saw it for `adapt_method` (see scoring.logged_operating_points and
        scoring.log_validation_scores); a run that logged none is a UserError saying what to do."""
        import mlflow

        from pneumo_exp.evaluation import adaptation
        from pneumo_exp.evaluation.calibration import Calibration

        m, transform = self.metrics, adaptation.TRANSFORM[adapt_method]
        if f"{adaptation.metric_prefix(transform)}calibration_slope" not in m:
            raise UserError(f"--adapt {adapt_method}: run {self.run_id} logged no operating point for "
                            f"it: train with eval.adapt={adapt_method} (or all) with this version")
        try:
            table = mlflow.artifacts.load_text(f"runs:/{self.run_id}/{adaptation.VALIDATION_SCORES}")
        except Exception as error:  # MLflow raises its own and OSError kinds for a missing artifact
            raise UserError(f"--adapt {adapt_method}: run {self.run_id} logged no "
                            f"{adaptation.VALIDATION_SCORES}, "
                            "which the applicability check needs: retrain it with this version") from error
        rows = list(csv.DictReader(table.splitlines()))
        labels = np.array([int(r["label"]) for r in rows])
        points = {}
        for t in dict.fromkeys(("plain", transform)):
            prefix = adaptation.metric_prefix(t)
            calibration = Calibration(m[f"{prefix}calibration_slope"], m[f"{prefix}calibration_intercept"],
                                      m["val_prevalence"])
            threshold = m[f"{prefix}threshold"] if prefix else self.threshold
            points[t] = adaptation.OperatingPoint(threshold, calibration, labels,
                                                  np.array([float(r[t]) for r in rows]))
        return points


def run_facts(model_uri: str) -> RunFacts:
    """The model's run, if its model can be trusted (reading.model_run): its threshold, source image
    size, metrics and params."""
    import mlflow

    from pneumo_exp.tracking import reading

    run_id = (model_uri.split("/")[1] if model_uri.startswith("runs:/")
              else mlflow.models.get_model_info(model_uri).run_id)
    run = reading.model_run(run_id)
    threshold = run.data.metrics.get("threshold")
    if threshold is None:
        raise UserError(f"run {run_id} logged no threshold (made before thresholds were chosen on "
                        "validation): retrain it with this version")
    return RunFacts(run_id, threshold, int(run.data.tags.get("source_image_size", 0)),
                    names.metrics_in_code(run.data.metrics),
                    run.data.params)
