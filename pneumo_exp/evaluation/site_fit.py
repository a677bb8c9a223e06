"""What a site's labelled sample fixes (eval.labelled), fitted on the sample alone: the calibration
and with it the threshold (Platt scaling, logistic recalibration), and with eval.labelled_head the
head (model revision with shrinkage, the step after recalibration in updating a clinical prediction
model at a new site: Steyerberg 2019, ch. 20; Janssen et al. 2008): a logistic regression of the
sample's labels on the model's logit and the inputs of its last layer, the inputs shrunk toward the
trained head by a penalty chosen by patient-grouped cross-validation on the sample, Platt scaling
alone where no revision predicts better.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.model_selection import StratifiedGroupKFold

from pneumo_exp import UserError
from pneumo_exp.evaluation.calibration import Calibration, logit
from pneumo_exp.evaluation.intervals import clusters

DECISION = 0.5  # on the recalibrated probability: the accuracy-maximizing call
SHRINKAGE = (np.inf, 256.0, 64.0, 16.0, 4.0, 1.0)  # the head's penalty over the logit's; inf: Platt alone
FOLDS = 5  # of the sample, to choose the shrinkage


def recalibration(labels: np.ndarray, probabilities: np.ndarray) -> Calibration:
    """Platt scaling fitted on the sample (sklearn's default L2 penalty on standardized logits, so
    that a sample whose classes separate perfectly still gets a finite slope)."""
    if len(np.unique(labels)) < 2:
        raise UserError("the labelled sample holds one class only: label images of both classes")
    x = logit(probabilities)
    centre, spread = float(np.mean(x)), float(np.std(x)) or 1.0
    fit = LogisticRegression().fit(((x - centre) / spread)[:, None], labels)
    slope = max(float(fit.coef_[0, 0]), 1e-6) / spread  # decisions stay monotone in the probability
    return Calibration(slope, float(fit.intercept_[0]) - slope * centre, float(np.mean(labels)))


@dataclass(frozen=True)
class Revision:
    """The head revised on the sample: a logistic regression of the label on the model's logit and
    the head's inputs, each standardized on the sample, the inputs divided by sqrt(shrinkage) so that
    sklearn's one L2 penalty weighs them `shrinkage` times the logit's (infinite: the logit alone)."""
    fit: LogisticRegression
    centre: np.ndarray
    spread: np.ndarray
    shrinkage: float

    def __call__(self, probabilities: np.ndarray, inputs: np.ndarray) -> np.ndarray:
        """The revised probability of pneumonia."""
        return self.fit.predict_proba(design(probabilities, inputs, self.centre, self.spread,
                                             self.shrinkage))[:, 1]


def design(probabilities: np.ndarray, inputs: np.ndarray, centre: np.ndarray, spread: np.ndarray,
           shrinkage: float) -> np.ndarray:
    """[logit, head inputs], standardized by `centre` and `spread`, then `scaled`."""
    return scaled((np.column_stack([logit(probabilities), inputs]) - centre) / spread, shrinkage)


def scaled(x: np.ndarray, shrinkage: float) -> np.ndarray:
    """The standardized [logit, head inputs] with the inputs divided by sqrt(shrinkage) (dropped at inf)."""
    return x[:, :1] if np.isinf(shrinkage) else x * np.r_[1.0, np.full(x.shape[1] - 1, shrinkage ** -0.5)]


def revised(labels: np.ndarray, probabilities: np.ndarray, inputs: np.ndarray, shrinkage: float) -> Revision:
    """The revision at one shrinkage, fitted on these images."""
    x = np.column_stack([logit(probabilities), inputs])
    centre, spread = x.mean(axis=0), x.std(axis=0)
    spread[spread == 0] = 1.0
    fit = LogisticRegression().fit(scaled((x - centre) / spread, shrinkage), labels)
    return Revision(fit, centre, spread, shrinkage)


def chosen_shrinkage(labels: np.ndarray, probabilities: np.ndarray, inputs: np.ndarray,
                     patients: np.ndarray, seed: int) -> float:
    """The SHRINKAGE with the lowest log loss over a stratified split of the sample by patient (up
    to FOLDS folds, fewer where a class has fewer patients), ties to the larger; inf where a class
    has a single patient."""
    unit = clusters(patients)
    folds = min(FOLDS, *(len(np.unique(unit[labels == c])) for c in (0, 1)))
    if folds < 2:
        return np.inf
    split = StratifiedGroupKFold(folds, shuffle=True, random_state=seed).split(inputs, labels, unit)
    held_out = [(fit, test) for fit, test in split if len(np.unique(labels[fit])) == 2]
    losses = {}
    for shrinkage in SHRINKAGE:
        predicted = np.full(len(labels), np.nan)
        for fit, test in held_out:
            predicted[test] = revised(labels[fit], probabilities[fit], inputs[fit], shrinkage)(
                probabilities[test], inputs[test])
        scored = ~np.isnan(predicted)
        losses[shrinkage] = log_loss(labels[scored], predicted[scored], labels=[0, 1])
    return min(losses, key=lambda k: (losses[k], -k))


@dataclass(frozen=True)
class SiteFit:
    """What the sample fixed: its size, the recalibration and the plain-probability threshold it
    amounts to, and (eval.labelled_head) the head's revision."""
    n: int
    calibration: Calibration
    revision: Revision | None = None

    @property
    def threshold(self) -> float:
        """The model's probability at which the recalibrated one is DECISION."""
        return self.calibration.threshold_at(DECISION)

    def logged(self) -> dict[str, float]:
        """Its metrics: the plain-probability threshold, or whether the head was revised (1) or
        the model recalibrated alone (0), and at which shrinkage."""
        if self.revision is None:
            return {"labelled_threshold": self.threshold}
        if np.isinf(self.revision.shrinkage):
            return {"labelled_head_revised": 0}
        return {"labelled_head_revised": 1, "labelled_head_shrinkage": self.revision.shrinkage}

    def said(self) -> str:
        if self.revision is None:
            return f"fixed the threshold at {self.threshold:.3f}"
        if np.isinf(self.revision.shrinkage):
            return "recalibrated the model (no revision of its head predicted them better)"
        return f"revised its head (shrinkage {self.revision.shrinkage:g})"

    def scores(self, probabilities: np.ndarray, inputs: np.ndarray | None) -> tuple[np.ndarray, float]:
        """The probabilities to score and the threshold to cut them at: the model's at the
        recalibrated threshold, or the revised ones at DECISION."""
        if self.revision is None:
            return probabilities, self.threshold
        return self.revision(probabilities, inputs), DECISION


def fit_site(labels: np.ndarray, probabilities: np.ndarray, inputs: np.ndarray | None = None,
             patients: np.ndarray | None = None, seed: int = 0) -> SiteFit:
    """The sample's recalibration, and where the head's inputs are given, its revision at the
    shrinkage the sample chooses."""
    fit = SiteFit(len(labels), recalibration(labels, probabilities))
    if inputs is None:
        return fit
    patients = np.full(len(labels), "") if patients is None else patients
    shrinkage = chosen_shrinkage(labels, probabilities, inputs, patients, seed)
    return SiteFit(fit.n, fit.calibration, revised(labels, probabilities, inputs, shrinkage))
