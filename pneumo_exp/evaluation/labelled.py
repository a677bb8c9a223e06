"""A new site's small labelled sample (eval.labelled): a hospital that adopts a model labels a few of
its own images. They fix what a few labels can fix, the calibration and with it the threshold
(logistic recalibration, the usual first update of a clinical prediction model at a new site:
Steyerberg 2019, ch. 20; Janssen et al. 2008): Platt scaling on the sample, p -> sigmoid(a logit(p) +
b), and each image called pneumonia where its recalibrated probability is at least 1/2, the
decision that maximizes accuracy at the site's share of pneumonia as the sample shows it. With
eval.labelled_bn the model's BatchNorm statistics are first set on the site's images (AdaBN, no
labels), and the sample is scored by that model. With eval.labelled_head the head is revised on the sample
too (site_fit.py).

The rest of the site, its patients disjoint from the sample's, is scored with it; the sample itself
is never scored. Where a set names no patients (PneumoniaMNIST), images stand for patients and the
line the run prints says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from omegaconf import DictConfig

from pneumo_exp.data import Split
from pneumo_exp.evaluation.intervals import clusters
from pneumo_exp.evaluation.site_fit import fit_site

if TYPE_CHECKING:
    import keras

MAX_DRAWS = 100  # redraws of a random sample that came out with one class only


def drawn(split: Split, n: int, seed: int) -> np.ndarray:
    """A mask of the `n`-image sample: whole patients in a random order (seeded) until `n` images,
    redrawn (up to MAX_DRAWS times) where it holds one class only."""
    unit = clusters(split.patients)
    rng = np.random.default_rng(seed)
    for _ in range(MAX_DRAWS):
        order = rng.permutation(unit.max() + 1)
        sizes = np.bincount(unit)[order]
        taken = order[: int(np.searchsorted(np.cumsum(sizes), n)) + 1]
        mask = np.isin(unit, taken)
        if len(np.unique(split.labels[mask])) == 2:
            return mask
    return mask  # one class in every draw: scored() says so and leaves the labelled scores out


def rest_of(split: Split, sample_patients: np.ndarray) -> np.ndarray:
    """A mask of the images to score: those of no patient in the sample (every image, where the
    sample names none)."""
    named = np.asarray(sample_patients, dtype=str)
    return ~np.isin(np.asarray(split.patients, dtype=str), named[named != ""])


def sample_and_rest(split: Split, spec: int | str, image_size: int, seed: int) -> tuple[Split, np.ndarray]:
    """The labelled sample (`spec` images drawn from the set, or the folder `spec` names) and a mask
    of the set's images to score: those of no patient in the sample."""
    if isinstance(spec, int):
        mask = drawn(split, spec, seed)
        return Split(split.images[mask], split.labels[mask], split.patients[mask]), ~mask
    from pneumo_exp.data.extra import load_folder

    sample, _ = load_folder(Path(spec).expanduser(), image_size)
    return sample, rest_of(split, sample.patients)


def scored(cfg: DictConfig, model: keras.Model, split: Split, probabilities: np.ndarray, threshold: float,
           spec: int | str) -> dict[str, float]:
    """The rest of a set scored with its labelled sample (`labelled_*`, with 95% intervals over its
    patients), the run's own threshold on the same images (`labelled_plain_*`), and how many
    labelled images were used (`labelled_n`)."""
    from pneumo_exp.evaluation import intervals, measure

    sample, rest = sample_and_rest(split, spec, cfg.data.image_size, cfg.seed)
    if len(np.unique(split.labels[rest])) < 2 or len(np.unique(sample.labels)) < 2:
        print(f"note: eval.labelled: a sample of {len(sample.labels)} images leaves "
              f"{int(rest.sum())} of the set's {len(rest)} to score: both need both classes, so the "
              "labelled scores are left out (label fewer images, or more of each class)")
        return {}
    (site_p, site_z), (sample_p, sample_z) = site_outputs(model, split, sample, probabilities, cfg)
    fit = fit_site(sample.labels, sample_p, sample_z, sample.patients, cfg.seed)
    q, cut = fit.scores(site_p[rest], None if site_z is None else site_z[rest])
    y, patients = split.labels[rest], split.patients[rest]
    metrics = {"labelled_n": fit.n, "labelled_scored_n": int(rest.sum())} | fit.logged()
    metrics |= {f"labelled_{k}": v for k, v in measure.binary_metrics(y, q, cut).items()}
    metrics |= {k.replace("test_", "labelled_", 1): v
                for k, v in intervals.of_test_scores(y, q, patients, cut, cfg.seed).items()}
    plain = measure.thresholded_metrics(y, probabilities[rest], threshold)
    metrics |= {f"labelled_plain_{k}": plain[k] for k in ("accuracy", "recall", "specificity")}
    unknown = " (its patients unknown: images stand for them)" if (split.patients == "").any() else ""
    print(f"labelled sample: {fit.n} images {fit.said()}; the other {int(rest.sum())} scored{unknown}: "
          f"accuracy {metrics['labelled_accuracy']:.3f} (plain {plain['accuracy']:.3f}), specificity "
          f"{metrics['labelled_specificity']:.3f} (plain {plain['specificity']:.3f})")
    return metrics


Outputs = tuple[np.ndarray, np.ndarray | None]  # probabilities, and the head's inputs where asked for


def site_outputs(model: keras.Model, split: Split, sample: Split, probabilities: np.ndarray,
                 cfg: DictConfig) -> tuple[Outputs, Outputs]:
    """The set's and the sample's probabilities and (eval.labelled_head) the inputs of the model's
    last layer: the plain model's, or (eval.labelled_bn) the model's with its BatchNorm statistics
    set on the set's images."""
    from pneumo_exp.data.pipeline import model_input
    from pneumo_exp.evaluation.adapt import batchnorm_adapted

    outputs = head_outputs(model) if cfg.eval.labelled_head else model

    def predicted(images: np.ndarray) -> Outputs:
        found = outputs.predict(model_input(images, cfg.data.channels), verbose=0)
        return (found[0].reshape(-1), found[1]) if isinstance(found, list) else (found.reshape(-1), None)

    if not (cfg.eval.labelled_bn or cfg.eval.labelled_head):
        return (probabilities, None), predicted(sample.images)
    if not cfg.eval.labelled_bn:
        return predicted(split.images), predicted(sample.images)
    with batchnorm_adapted(model, model_input(split.images, cfg.data.channels)):
        return predicted(split.images), predicted(sample.images)


def head_outputs(model: keras.Model) -> keras.Model:
    """`model` with a second output, the inputs of its last layer where that is the one-unit Dense
    whose sigmoid is the probability (the head eval.labelled_head revises); `model` itself, said in
    one line, where it is not."""
    import keras

    head = model.layers[-1]
    if isinstance(head, keras.layers.Dense) and head.units == 1:
        return keras.Model(model.inputs, [model.outputs[0], head.input])
    print(f"note: eval.labelled_head: this network ends in {type(head).__name__}, not in a one-unit Dense "
          "head, so its sample recalibrates it without revising a head")
    return model
