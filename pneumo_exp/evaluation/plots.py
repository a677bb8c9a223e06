"""Every figure a run logs. Each takes arrays and returns a matplotlib Figure."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: runs happen on headless machines

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from sklearn.calibration import CalibrationDisplay
from sklearn.metrics import (
    ConfusionMatrixDisplay,
    PrecisionRecallDisplay,
    RocCurveDisplay,
)
from sklearn.metrics import roc_curve as roc_points

CLASS_NAMES = ("normal", "pneumonia")


CURVES = ("precision", "recall", "accuracy", "loss")  # learning_curves' panels, train and val_


def learning_curves(history: dict[str, list[float]]) -> Figure:
    """The notebook's four panels: precision, recall, accuracy, loss; train vs validation."""
    fig, axes = plt.subplots(1, 4, figsize=(20, 3.5))
    for ax, name in zip(axes, CURVES, strict=True):
        epochs = np.arange(1, len(history[name]) + 1)
        ax.plot(epochs, history[name], label="train")
        ax.plot(epochs, history[f"val_{name}"], label="val")
        ax.set(title=f"Model {name}", xlabel="epoch", ylabel=name)
        ax.legend()
    fig.tight_layout()
    return fig


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray) -> Figure:
    """Counts of each (true, predicted) class pair."""
    display = ConfusionMatrixDisplay.from_predictions(labels, predicted, labels=[0, 1],
                                                      display_labels=CLASS_NAMES, colorbar=False)
    return display.figure_


def roc_curve(labels: np.ndarray, probabilities: np.ndarray) -> Figure:
    """Sensitivity against 1 - specificity over every threshold, with the chance line."""
    display = RocCurveDisplay.from_predictions(labels, probabilities, plot_chance_level=True)
    return display.figure_


def pr_curve(labels: np.ndarray, probabilities: np.ndarray) -> Figure:
    """Precision against recall over every threshold, with the chance level (the prevalence)."""
    display = PrecisionRecallDisplay.from_predictions(labels, probabilities,
                                                      plot_chance_level=True)
    return display.figure_


def reliability(labels: dict[str, np.ndarray], probabilities: dict[str, np.ndarray]) -> Figure:
    """Calibration: observed pneumonia rate against predicted probability, per split (10 bins)."""
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "k:", label="perfectly calibrated")
    for split in labels:
        CalibrationDisplay.from_predictions(labels[split], probabilities[split], n_bins=10,
                                            name=split, ax=ax)
    ax.set(title="Reliability", xlabel="mean predicted probability", ylabel="fraction pneumonia")
    return fig


def heatmaps(images: np.ndarray, maps: np.ndarray, titles: list[str]) -> Figure:
    """Each image beside itself overlaid with its heatmap (Grad-CAM), titled with the true class
    and the predicted probability of pneumonia."""
    fig, axes = plt.subplots(2, len(images), figsize=(2.2 * len(images), 4.6), squeeze=False)
    for column, (image, heat, title) in enumerate(zip(images, maps, titles, strict=True)):
        for ax in axes[:, column]:
            ax.imshow(image[..., 0], cmap="gray")
            ax.axis("off")
        axes[1, column].imshow(heat, cmap="jet", alpha=0.4, vmin=0, vmax=1)
        axes[0, column].set_title(title, fontsize=8)
    fig.tight_layout()
    return fig


def image_grid(images: np.ndarray, labels: np.ndarray) -> Figure:
    """The notebook's show_batch: up to 16 images titled with their class (or, blended by MixUp,
    their share of pneumonia)."""
    fig, axes = plt.subplots(4, 4, figsize=(10, 10))
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, label in zip(axes.flat, images, labels, strict=False):
        ax.imshow(image.squeeze().astype("uint8"), cmap="gray" if image.shape[-1] == 1 else None)
        ax.set_title(CLASS_NAMES[int(label)].upper() if label in (0, 1) else f"{label:.2f} PNEUMONIA")
    fig.tight_layout()
    return fig


# --- Sweep reports: one line or bar per cell ----------------------------------------------------

def save(figure: Figure, path: Path) -> None:
    """PNG without a software-version stamp, so the same data gives the same file."""
    figure.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(figure)


def cell_bars(summary: dict[str, dict[str, tuple[float, float, float, float]]],
              metrics: tuple[str, ...]) -> Figure:
    """One panel per metric: a bar per cell at its mean, error bar = 95% confidence interval."""
    cells = list(summary)
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 1.5 + 0.35 * len(cells)),
                             sharey=True)
    for ax, metric in zip(np.atleast_1d(axes), metrics, strict=True):
        means = [summary[c][metric][0] for c in cells]
        errors = [np.nan_to_num(summary[c][metric][3] - summary[c][metric][0]) for c in cells]
        ax.barh(cells, means, xerr=errors, capsize=3)
        ax.set(title=metric, xlim=(0, 1))
    fig.tight_layout()
    return fig


def cell_rocs(predictions: dict[str, list[np.ndarray]]) -> Figure:
    """Mean ROC curve per cell over its seeds (rows of label, probability per test image)."""
    grid = np.linspace(0, 1, 201)
    fig, ax = plt.subplots(figsize=(6, 6))
    for cell, runs in predictions.items():
        curves = []
        for run in runs:
            fpr, tpr, _ = roc_points(run[:, 0], run[:, 1])
            curves.append(np.interp(grid, fpr, tpr))
        ax.plot(grid, np.mean(curves, axis=0), label=cell)
    ax.plot([0, 1], [0, 1], "k:", label="chance")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="Test ROC (mean over seeds)")
    ax.legend(fontsize="small")
    return fig


def cell_curves(curves: dict[str, list[list[float]]], metric: str) -> Figure:
    """Per-epoch `metric` per cell, averaged over the seeds that reached each epoch."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for cell, runs in curves.items():
        longest = max(len(run) for run in runs)
        mean = [np.mean([run[e] for run in runs if len(run) > e]) for e in range(longest)]
        ax.plot(np.arange(1, longest + 1), mean, marker="o", label=cell)
    ax.set(xlabel="epoch", ylabel=metric, title=f"{metric} per epoch (mean over seeds)")
    ax.legend(fontsize="small")
    return fig
