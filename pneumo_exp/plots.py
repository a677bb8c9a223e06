"""Every figure a run logs. Each takes arrays and returns a matplotlib Figure."""

import matplotlib

matplotlib.use("Agg")  # files only: runs happen on headless machines

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import (
    ConfusionMatrixDisplay,
    PrecisionRecallDisplay,
    RocCurveDisplay,
)

CLASS_NAMES = ("normal", "pneumonia")


def learning_curves(history: dict[str, list[float]]) -> Figure:
    """The notebook's four panels: precision, recall, accuracy, loss; train vs validation."""
    fig, axes = plt.subplots(1, 4, figsize=(20, 3.5))
    for ax, name in zip(axes, ("precision", "recall", "accuracy", "loss"), strict=True):
        epochs = np.arange(1, len(history[name]) + 1)
        ax.plot(epochs, history[name], label="train")
        ax.plot(epochs, history[f"val_{name}"], label="val")
        ax.set(title=f"Model {name}", xlabel="epoch", ylabel=name)
        ax.legend()
    fig.tight_layout()
    return fig


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray) -> Figure:
    display = ConfusionMatrixDisplay.from_predictions(labels, predicted, labels=[0, 1],
                                                      display_labels=CLASS_NAMES, colorbar=False)
    return display.figure_


def roc_curve(labels: np.ndarray, probabilities: np.ndarray) -> Figure:
    display = RocCurveDisplay.from_predictions(labels, probabilities, plot_chance_level=True)
    return display.figure_


def pr_curve(labels: np.ndarray, probabilities: np.ndarray) -> Figure:
    display = PrecisionRecallDisplay.from_predictions(labels, probabilities,
                                                      plot_chance_level=True)
    return display.figure_


def image_grid(images: np.ndarray, labels: np.ndarray) -> Figure:
    """The notebook's show_batch: up to 16 images titled with their class."""
    fig, axes = plt.subplots(4, 4, figsize=(10, 10))
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, label in zip(axes.flat, images, labels, strict=False):
        ax.imshow(image.squeeze().astype("uint8"), cmap="gray" if image.shape[-1] == 1 else None)
        ax.set_title(CLASS_NAMES[int(label)].upper())
    fig.tight_layout()
    return fig
