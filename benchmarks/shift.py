"""Label-free adaptation under controlled shifts, on a patient-disjoint held-out split.

For each seed, a seed CNN (BatchNorm and Dropout) trained on the Kermany folder by the harness
itself, or the FINISHED run of the same config already in the store, scores its held-out test
split shifted two ways:

  - prevalence: the split resampled (without replacement) to 50%, 62.5%, 74% (training's) and 85%
    pneumonia;
  - acquisition, in the style of ImageNet-C, 3 severities each: contrast, gamma, blur, noise,
    downscale-then-upscale (the images' resolution), JPEG quality.

Each shifted set is scored plain and adapted (pneumo_exp/adapt.py: prior, bn), with the
operating points the run chose on validation. It prints AUC / accuracy / sensitivity / specificity
per shift and method, the mean over seeds, the EM estimate of each prevalence, the share of seeds
whose applicability check passed (pneumo_exp/applicability.py; printed, not acted on: the scores are
shown either way), and a last line

  prior_gain_acc_at_50=… …_at_62.5=… …_at_85=… prior_cost_acc_at_74=… em_error_max=…
  bn_gain_spec_mean=… bn_gain_acc_mean=…

    python benchmarks/shift.py [--data DIR] [--seeds 0 1 2] [--image-size 64] [--epochs 5]
"""

from __future__ import annotations

import argparse
import io
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

PROJECT = Path(__file__).resolve().parents[1]
KERMANY = PROJECT.parent / "shared" / "data" / "chest_xray_pneumonia_224" / "chest_xray"
PREVALENCES = (0.5, 0.625, 0.74, 0.85)


def contrast(x: np.ndarray, c: float) -> np.ndarray:
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    return mean + c * (x - mean)


def gamma(x: np.ndarray, g: float) -> np.ndarray:
    return 255 * (x / 255) ** g


def noise(x: np.ndarray, sd: float, rng: np.random.Generator) -> np.ndarray:
    return x + rng.normal(0, sd, x.shape)


def per_image(x: np.ndarray, change) -> np.ndarray:
    """`change` (a PIL image to a PIL image) applied to each grayscale image of `x`."""
    out = [np.asarray(change(Image.fromarray(image[..., 0].astype(np.uint8))), dtype=float)[..., None]
           for image in np.clip(x, 0, 255)]
    return np.stack(out)


def jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(buffer)


def downscaled(image: Image.Image, factor: int) -> Image.Image:
    """The image at 1/factor of its resolution, scaled back up (a low-resolution export)."""
    size = image.size
    return image.resize((size[0] // factor, size[1] // factor), Image.BILINEAR).resize(size, Image.BILINEAR)


def corruptions(size: int, rng: np.random.Generator) -> dict[str, object]:
    """name -> function of a uint8 batch: 6 kinds x 3 severities, scaled to the image side."""
    scale = size / 64
    found = {}
    for level, (c, g, sigma, sd, factor, quality) in enumerate(
            [(0.6, 1.5, 0.5, 8, 2, 30), (0.4, 2.0, 1.0, 16, 3, 15), (0.25, 2.5, 2.0, 32, 4, 5)], start=1):
        found |= {
            f"contrast{level}": lambda x, c=c: contrast(x, c),
            f"gamma{level}": lambda x, g=g: gamma(x, g),
            f"blur{level}": lambda x, s=sigma * scale: per_image(
                x, lambda im: im.filter(ImageFilter.GaussianBlur(s))),
            f"noise{level}": lambda x, sd=sd: noise(x, sd, rng),
            f"downscale{level}": lambda x, f=factor: per_image(x, lambda im: downscaled(im, f)),
            f"jpeg{level}": lambda x, q=quality: per_image(x, lambda im: jpeg(im, q)),
        }
    return found


def resampled(labels: np.ndarray, prevalence: float, rng: np.random.Generator) -> np.ndarray:
    """Indices of the largest subset (without replacement) with `prevalence` pneumonia."""
    pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    n_pos = min(len(pos), int(len(neg) * prevalence / (1 - prevalence)))
    n_neg = min(len(neg), round(n_pos * (1 - prevalence) / prevalence))
    drawn = [rng.choice(pos, n_pos, replace=False), rng.choice(neg, n_neg, replace=False)]
    return np.sort(np.concatenate(drawn))


def compose(overrides: list[str]):
    """The project's config, composed as the CLI composes it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(PROJECT / "conf"), version_base="1.3"):
        return hydra_compose("config", overrides=overrides)


def trained_run(overrides: list[str]) -> str:
    """The FINISHED run of this config in the store, or a new one trained by the harness."""
    import mlflow

    from pneumo_exp import config
    from pneumo_exp.run import run_experiment
    from pneumo_exp.tracking import store

    cfg = compose(overrides)
    store.open_experiment(cfg.tracking)
    query = f"tags.config_hash = '{config.config_hash(cfg)}' and attributes.status = 'FINISHED'"
    found = mlflow.search_runs(experiment_names=[cfg.tracking.experiment], filter_string=query, max_results=1)
    if len(found):
        print(f"reusing run {found['run_id'].iloc[0]} ({' '.join(overrides[-1:])})")
        return str(found["run_id"].iloc[0])
    return run_experiment(cfg, overrides).run_id


def probabilities(model, images: np.ndarray, channels: int) -> np.ndarray:
    from pneumo_exp.data.pipeline import model_input

    return model.predict(model_input(images, channels), batch_size=128, verbose=0).reshape(-1)


def shifted_sets(images: np.ndarray, labels: np.ndarray, seed: int
                 ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The held-out split under every shift: name -> (uint8 images, labels)."""
    rng = np.random.default_rng(seed)
    sets = {}
    for prevalence in PREVALENCES:
        keep = resampled(labels, prevalence, rng)
        sets[f"prevalence {prevalence:g}"] = images[keep], labels[keep]
    for name, change in corruptions(images.shape[1], rng).items():
        sets[name] = np.clip(np.round(change(images.astype(float))), 0, 255).astype(np.uint8), labels
    return sets


def scored_seed(overrides: list[str]) -> dict[tuple[str, str], dict[str, float]]:
    """(shift, method) -> auc, accuracy, recall, specificity, whether the method's check passed
    (1/0), and the EM estimate where made, for one seed's model on every shifted set."""
    import mlflow

    from pneumo_exp import data
    from pneumo_exp.evaluation import adaptation, calibration, measure, scoring
    from pneumo_exp.tracking import reading

    cfg = compose([*overrides, "eval.adapt=all"])  # the operating points of every method
    run_id = trained_run(overrides)
    model = reading.load_model(f"runs:/{run_id}/model")
    threshold = mlflow.get_run(run_id).data.metrics["threshold"]
    dataset = data.load(cfg.data)
    channels = cfg.data.channels
    points = scoring.operating_points(cfg, model, dataset, threshold,
                                      probabilities(model, dataset.val.images, channels))
    results = {}
    for name, (images, labels) in shifted_sets(dataset.test.images, dataset.test.labels, cfg.seed).items():
        p = probabilities(model, images, channels)
        scored = {"plain": (p, threshold, calibration.prior_adapted(p, points["plain"].calibration)[1], 1.0)}
        for method, a in adaptation.adapted_predictions(("prior", "bn"), model, images, p, points,
                                                        channels, cfg.eval.alpha, cfg.eval.min_images,
                                                        cfg.seed).items():
            scored[method] = (a.probabilities, a.threshold, a.prevalence, float(a.verdict.applies))
        for method, (q, t, estimate, applies) in scored.items():
            m = measure.binary_metrics(labels, q, t)
            results[name, method] = {k: m[k] for k in ("auc", "accuracy", "recall", "specificity")}
            results[name, method] |= {"estimate": estimate, "true": float(np.mean(labels)),
                                      "applies": applies}
    return results


def mean_over_seeds(per_seed: list[dict]) -> dict[tuple[str, str], dict[str, float]]:
    return {key: {m: float(np.mean([s[key][m] for s in per_seed])) for m in per_seed[0][key]}
            for key in per_seed[0]}


def summary(mean: dict[tuple[str, str], dict[str, float]]) -> str:
    """The last line: what prior adaptation gains (and costs at training's prevalence), how far EM
    lands from the truth, and what bn gains under the acquisition shifts."""
    def gain(shift: str, method: str, metric: str) -> float:
        return mean[shift, method][metric] - mean[shift, "plain"][metric]

    acquisition = sorted({shift for shift, _ in mean if not shift.startswith("prevalence")})
    em = max(abs(mean[f"prevalence {p:g}", "prior"]["estimate"] - mean[f"prevalence {p:g}", "prior"]["true"])
             for p in PREVALENCES)
    parts = [f"prior_gain_acc_at_{p * 100:g}={gain(f'prevalence {p:g}', 'prior', 'accuracy'):+.3f}"
             for p in PREVALENCES if p != 0.74]
    parts += [f"prior_cost_acc_at_74={-gain('prevalence 0.74', 'prior', 'accuracy'):+.3f}",
              f"em_error_max={em:.3f}"]
    for metric, short in (("specificity", "spec"), ("accuracy", "acc")):
        mean_gain = np.mean([gain(shift, "bn", metric) for shift in acquisition])
        parts.append(f"bn_gain_{short}_mean={mean_gain:+.3f}")
    return " ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=KERMANY,
                        help="a Kaggle-layout folder (default: %(default)s)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--store", default="sqlite:///mlruns/mlflow.db",
                        help="the MLflow store whose runs are reused, and where new ones are logged")
    args = parser.parse_args()
    started = time.perf_counter()
    overrides = ["data=chest_xray", f"data.root={args.data}", f"data.image_size={args.image_size}",
                 f"train.epochs={args.epochs}", "tracking.log_figures=false", f"tracking.uri={args.store}"]
    per_seed = [scored_seed([*overrides, f"seed={seed}"]) for seed in args.seeds]
    mean = mean_over_seeds(per_seed)
    print(f"\nmean over seeds {args.seeds}; plain = the run's threshold; prior decides at 1/2 on the "
          "re-weighted probabilities; bn at the threshold its renormalized model chose on validation")
    print(f"{'shift':<18} {'method':<6} {'auc':>6} {'acc':>6} {'sens':>6} {'spec':>6} {'EM est':>7} "
          f"{'true':>6} {'applies':>8}")
    for (shift, method), m in mean.items():
        prevalence = shift.startswith("prevalence")
        estimate = f"{m['estimate']:7.3f}" if method == "prior" and prevalence else " " * 7
        true = f"{m['true']:6.3f}" if prevalence else ""
        print(f"{shift:<18} {method:<6} {m['auc']:6.3f} {m['accuracy']:6.3f} {m['recall']:6.3f} "
              f"{m['specificity']:6.3f} {estimate} {true:>6} {m['applies']:8.2f}")
    print(f"total {time.perf_counter() - started:.0f} s")
    print(summary(mean))


if __name__ == "__main__":
    main()
