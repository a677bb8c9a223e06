"""Score chest X-rays with a logged model:

    python -m pneumo_exp.predict MODEL_URI PATH... [--out predictions.csv] [--gradcam DIR]

MODEL_URI is `runs:/RUN_ID/model` (or `models:/NAME/VERSION`); each PATH an image or a folder
(searched recursively for .jpeg/.jpg/.png/.dcm). Images are decoded as in training: grayscale,
resized to the model's input; for a model trained on an npz (PneumoniaMNIST), first made as its images were
(centre square at 28 px). The CSV has file, probability (of pneumonia) and label at the threshold
the run chose on validation; files that do not decode are listed on stderr and left out.
"""

import argparse
import csv
import sys
from pathlib import Path

from pneumo_exp import UserError, data, file_in_the_way, one_line_errors, store_uri_default


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


def run_facts(model_uri: str) -> tuple[float, int]:
    """The decision threshold the model's run chose on validation, and the side of its source's
    square images (tag source_image_size: 28 for PneumoniaMNIST; 0 for image folders)."""
    import mlflow

    run_id = mlflow.models.get_model_info(model_uri).run_id
    run = mlflow.get_run(run_id)
    threshold = run.data.metrics.get("threshold")
    if threshold is None:
        raise UserError(f"run {run_id} logged no threshold (made before thresholds were chosen on "
                        "validation): retrain it with this version")
    return threshold, int(run.data.tags.get("source_image_size", 0))


def main(argv: list[str] | None = None) -> None:
    """The command line; a UserError is one line on stderr and exit code 2."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_uri", help="runs:/RUN_ID/model or models:/NAME/VERSION")
    parser.add_argument("paths", nargs="+", help="image files or folders")
    parser.add_argument("--out", default="predictions.csv",
                        help="CSV to write, in an existing folder (default: %(default)s)")
    parser.add_argument("--gradcam", metavar="DIR",
                        help="also save a Grad-CAM overlay per image here (made if missing)")
    parser.add_argument("--tracking-uri", default=store_uri_default())
    args = parser.parse_args(argv)
    with one_line_errors():
        out, gradcam_dir = Path(args.out), args.gradcam and Path(args.gradcam)
        check_outputs(out, gradcam_dir)  # first: loading the model and scoring take seconds
        predict(args.model_uri, image_files(args.paths), out, args.tracking_uri, gradcam_dir)


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


def predict(model_uri: str, files: list[Path], out: Path, tracking_uri: str,
            gradcam_dir: Path | None = None) -> None:
    """Write `out` (file, probability, label) for `files`; with gradcam_dir, one overlay PNG each.
    The store must exist (it is never made here); the output paths are checked by main, first."""
    import mlflow

    from pneumo_exp import store

    store.open_for_reading(tracking_uri)
    try:
        threshold, source_size = run_facts(model_uri)
        model = mlflow.tensorflow.load_model(model_uri)
    except mlflow.exceptions.MlflowException as error:
        raise UserError(f"cannot load {model_uri} from {tracking_uri} ({str(error).splitlines()[0]}): "
                        "pass runs:/RUN_ID/model and the store's --tracking-uri") from error
    from pneumo_exp import explain, plots
    from pneumo_exp.data.pipeline import model_input  # TensorFlow is loaded by now

    _, size, _, channels = model.input_shape
    images, kept, _, problems = data.decode(files, size, source_size)
    for problem in problems:
        print(f"left out {problem}", file=sys.stderr)
    if not len(images):
        raise UserError(f"none of the {len(files)} files is an image that decodes (see above): "
                        "pass chest X-ray images")
    pixels = model_input(images, channels)
    probabilities = model.predict(pixels, verbose=0).reshape(-1)
    predicted = (probabilities >= threshold).astype(int)
    kept_files = [f for f, ok in zip(files, kept, strict=True) if ok]
    with out.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "probability", "label"])
        for file, p, label in zip(kept_files, probabilities, predicted, strict=True):
            writer.writerow([file, f"{p:.6f}", data.CLASSES[label]])
    print(f"{len(kept_files)} images scored at threshold {threshold:.3f} → {out}")
    if gradcam_dir:
        gradcam_dir.mkdir(parents=True, exist_ok=True)
        heat = explain.gradcam(model, pixels, predicted)
        for i, file in enumerate(kept_files):
            title = f"{data.CLASSES[predicted[i]]}, p={probabilities[i]:.2f}"
            plots.save(plots.heatmaps(images[i:i + 1], heat[i:i + 1], [title]),
                       gradcam_dir / f"{i + 1:04d}_{file.stem}.png")  # CSV row i+1: unique
        print(f"Grad-CAM overlays → {gradcam_dir}")


if __name__ == "__main__":
    main()
