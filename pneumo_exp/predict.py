"""Score chest X-rays with a logged model:

    python -m pneumo_exp.predict MODEL_URI PATH... [--out predictions.csv] [--gradcam DIR]
                                 [--adapt prior|bn|tent]

MODEL_URI is `runs:/RUN_ID/model` (or `models:/NAME/VERSION`, or a cross-validated sweep's id or
parent run id: the mean of its fold models, `--cell` naming one of several cells); each PATH an
image or a folder
(searched recursively for .jpeg/.jpg/.png/.dcm). Images are decoded as in training: grayscale,
resized to the model's input; for a model trained on an npz (PneumoniaMNIST), first made as its images were
(centre square at 28 px). The CSV has file, probability (of pneumonia) and label at the threshold
the run chose on validation; files that do not decode are listed on stderr and left out. With
--adapt, the images are also scored adapted to them as a set, without labels (pneumo_exp/adaptation.py:
prior, bn or tent), in two more columns, where the method applies to them (its check, as in
the run); the plain columns stay as they are.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pneumo_exp import UserError, data, file_in_the_way, one_line_errors, store_uri_default
from pneumo_exp.evaluation.settings import ADAPT_METHODS
from pneumo_exp.tracking.logged_run import RunFacts, run_facts

if TYPE_CHECKING:
    import keras


def image_files(paths: list[str]) -> list[Path]:
    """The image files named, and those below each folder named (hidden files left out)."""
    files = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.suffix.lower() in data.IMAGE_SUFFIXES
                            and not p.name.startswith(".") and p.is_file())
        elif path.is_file():
            files.append(path)
        else:
            raise UserError(f"{path} does not exist: pass image files or folders of images")
    if not files:
        raise UserError(f"no {data.SUFFIX_LIST} images in {' '.join(paths)}: pass image files or folders")
    return files


def main(argv: list[str] | None = None) -> None:
    """The command line; a UserError is one line on stderr and exit code 2."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_uri", help="runs:/RUN_ID/model, models:/NAME/VERSION, or a cross-validated "
                        "sweep's id or parent run id (the mean of its fold models)")
    parser.add_argument("paths", nargs="+", help="image files or folders")
    parser.add_argument("--out", default="predictions.csv",
                        help="CSV to write, in an existing folder (default: %(default)s)")
    parser.add_argument("--gradcam", metavar="DIR",
                        help="also save a Grad-CAM overlay per image here (made if missing)")
    parser.add_argument("--adapt", choices=ADAPT_METHODS["all"],
                        help="also score the images adapted to them as a set, without labels: prior "
                        "(their share of pneumonia, estimated), bn (BatchNorm statistics re-estimated "
                        "on them) or tent (BatchNorm scales and offsets fitted to them)")
    parser.add_argument("--cell", help="with a cross-validated sweep of several cells, the cell to "
                        "score with, as the report names it, e.g. 'imbalance=focal'")
    parser.add_argument("--experiment", default="pneumo_exp", help="the sweep's MLflow experiment")
    parser.add_argument("--tracking-uri", default=store_uri_default())
    args = parser.parse_args(argv)
    with one_line_errors():
        out, gradcam_dir = Path(args.out), args.gradcam and Path(args.gradcam)
        check_outputs(out, gradcam_dir)  # first: loading the model and scoring take seconds
        files = image_files(args.paths)
        check_replaces_nothing(out, files)
        if not is_model(args.model_uri) and (args.adapt or gradcam_dir):
            raise UserError("--adapt and --gradcam take one model: pass one fold run's runs:/RUN_ID/model, "
                            "not the cross-validated sweep")
        predict(args.model_uri, files, out, args.tracking_uri, gradcam_dir, args.adapt, args.cell,
                args.experiment)


def check_replaces_nothing(out: Path, files: list[Path]) -> None:
    """The CSV replaces no file but one predict wrote (its header says so): never an image to score."""
    if out.resolve() in {file.resolve() for file in files}:
        raise UserError(f"--out {out} is one of the images to score: pass a new CSV path, e.g. "
                        "--out predictions.csv")
    if out.is_file() and not written_by_predict(out):
        raise UserError(f"--out {out} exists and is not a CSV that predict wrote: pass a new path, or "
                        "move it away")


def check_outputs(out: Path, gradcam_dir: Path | None) -> None:
    """Where the CSV and the overlays go, checked before anything loads. The CSV's folder must
    exist (a mistyped folder is an error, not made); the Grad-CAM folder is made with its parents,
    unless a file is in its way."""
    if out.is_dir():
        raise UserError(f"--out {out} is a folder: pass the CSV file to write, e.g. "
                        f"--out {out / 'predictions.csv'}")
    if not out.parent.is_dir():
        raise UserError(f"--out {out}: {out.parent} is not a folder: make it first, or pass a CSV "
                        "path in an existing folder")
    if gradcam_dir is None:
        return
    blocking = file_in_the_way(gradcam_dir)
    if blocking is not None:
        raise UserError(f"--gradcam {gradcam_dir}: {blocking} is a file: pass a folder for the "
                        "overlays (made if missing)")


def is_model(model_uri: str) -> bool:
    return model_uri.startswith(("runs:/", "models:/"))


def model_facts(model_uri: str, tracking_uri: str, cell: str | None, experiment: str
                ) -> tuple[RunFacts, list[str]]:
    """The model's run's facts and the URIs of the models to average, from the store alone (a run that
    cannot be used fails at once); for a cross-validated sweep, its cell's fold models, averaged."""
    from pneumo_exp.tracking import store

    store.open_for_reading(tracking_uri)
    uris, threshold = [model_uri], None
    if not is_model(model_uri):
        from pneumo_exp.report.folds import fold_members

        members, threshold = fold_members(model_uri, experiment, cell)
        uris = [f"runs:/{run_id}/model" for run_id in members["run_id"]]
        print(f"the mean of cell '{members['cell'].iloc[0]}''s {len(uris)} fold models (sweep {model_uri}), "
              f"at threshold {threshold:.3f}, the mean of theirs (each chosen on its fold's validation)")
    with unloadable(uris[0], tracking_uri):
        facts = run_facts(uris[0])
    return (facts if threshold is None else dataclasses.replace(facts, threshold=threshold)), uris


@contextlib.contextmanager
def unloadable(uri: str, tracking_uri: str) -> Iterator[None]:
    """An MLflow error (no such run, no model file) as the one line that says which model to pass."""
    import mlflow

    try:
        yield
    except mlflow.exceptions.MlflowException as error:
        raise UserError(f"cannot load {uri} from {tracking_uri} ({str(error).splitlines()[0]}): "
                        "pass runs:/RUN_ID/model and the store's --tracking-uri") from error


def predict(model_uri: str, files: list[Path], out: Path, tracking_uri: str, gradcam_dir: Path | None = None,
            adapt_method: str | None = None, cell: str | None = None, experiment: str = "pneumo_exp") -> None:
    """Write `out` (file, probability, label; with adapt_method, adapted_probability and
    adapted_label) for `files`; with gradcam_dir, one overlay PNG each. The store must exist (it is
    never made here); the output paths are checked by main, first."""
    from pneumo_exp.tracking.reading import load_model

    facts, uris = model_facts(model_uri, tracking_uri, cell, experiment)
    if adapt_method:
        facts.check_set_size(len(files), adapt_method)  # before the model loads; again once decoded
    with unloadable(uris[0], tracking_uri):
        models = [load_model(uri) for uri in uris]
    from pneumo_exp.data.pipeline import model_input  # TensorFlow is loaded by now

    model = models[0]
    _, size, _, channels = model.input_shape
    images, kept, _, problems = data.decode(files, size, facts.source_size)
    for problem in problems:
        print(f"left out {problem}", file=sys.stderr)
    if not len(images):
        raise UserError(f"none of the {len(files)} files is an image that decodes (see above): "
                        "pass chest X-ray images")
    pixels = model_input(images, channels)
    probabilities = np.mean([m.predict(pixels, verbose=0).reshape(-1) for m in models], axis=0)
    columns = {"probability": probabilities, "label": probabilities >= facts.threshold}
    if adapt_method:
        facts.check_set_size(len(images), adapt_method)
        columns |= adapted_columns(model, images, probabilities, facts, adapt_method, channels)
    kept_files = [f for f, ok in zip(files, kept, strict=True) if ok]
    write_csv(out, kept_files, columns)
    print(f"{len(kept_files)} images scored at threshold {facts.threshold:.3f} → {out}")
    if gradcam_dir:
        write_gradcam(model, pixels, images, columns, kept_files, gradcam_dir)


def adapted_columns(model: keras.Model, images: np.ndarray, probabilities: np.ndarray, facts: RunFacts,
                    adapt_method: str, channels: int) -> dict[str, np.ndarray]:
    """The images scored adapted as a set (adaptation.py), where the method applies to them, with
    the shift check, the verdict and the estimated share of pneumonia said in a line each."""
    from pneumo_exp.evaluation import adaptation

    points = facts.operating_points(adapt_method)
    m, p = facts.metrics, facts.params
    margins = [float(p.get(f"eval.shift_{kind}_margin", 0.1)) for kind in ("prevalence", "probability")]
    shift = adaptation.shift_check(probabilities, points["plain"].calibration, m["train_prevalence"],
                                   m["val_mean_probability"], *margins)
    adapted = adaptation.adapted_predictions(
        (adapt_method,), model, images, probabilities, points, channels, float(p.get("eval.alpha", 0.05)),
        facts.min_images, int(p.get("seed", 0)))
    if shift.suspected:
        print(adaptation.shift_warning("scored", shift, m["train_prevalence"], m["val_mean_probability"],
                                       adapted, key="--adapt"))
    result = adapted[adapt_method]
    if not result.verdict.applies:
        print(f"--adapt {adapt_method} does not apply to these images ({result.verdict.reason}): "
              "the adapted columns are left out")
        return {}
    print(f"estimated pneumonia share of these images {shift.estimated_prevalence:.3f} "
          f"(training {m['train_prevalence']:.3f}); adapted ({adapt_method}) labels at threshold "
          f"{result.threshold:.3f} of the adapted probability")
    return {"adapted_probability": result.probabilities,
            "adapted_label": result.probabilities >= result.threshold}


def written_by_predict(path: Path) -> bool:
    """Whether the file starts with the header write_csv writes."""
    with path.open("rb") as handle:
        return handle.read(len(HEADER)) == HEADER


HEADER = b"file,probability,label"


def write_csv(out: Path, files: list[Path], columns: dict[str, np.ndarray]) -> None:
    """One row per image: file, then each column (probabilities to 6 decimals, labels by name)."""
    with out.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", *columns])
        for i, file in enumerate(files):
            writer.writerow([file] + [data.CLASSES[int(v[i])] if v.dtype == bool else f"{v[i]:.6f}"
                                      for v in columns.values()])


def write_gradcam(model: keras.Model, pixels: np.ndarray, images: np.ndarray,
                  columns: dict[str, np.ndarray], files: list[Path], gradcam_dir: Path) -> None:
    """One Grad-CAM overlay per image, for its plain label, named by its CSV row."""
    from pneumo_exp.evaluation import explain, plots

    gradcam_dir.mkdir(parents=True, exist_ok=True)
    predicted = columns["label"].astype(int)
    heat = explain.gradcam(model, pixels, predicted)
    for i, file in enumerate(files):
        title = f"{data.CLASSES[predicted[i]]}, p={columns['probability'][i]:.2f}"
        plots.save(plots.heatmaps(images[i:i + 1], heat[i:i + 1], [title]),
                   gradcam_dir / f"{i + 1:04d}_{file.stem}.png")  # CSV row i+1: unique
    print(f"Grad-CAM overlays → {gradcam_dir}")


if __name__ == "__main__":
    main()
