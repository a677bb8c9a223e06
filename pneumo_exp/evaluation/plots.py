"""Every figure a run logs. Each takes arrays and returns a matplotlib Figure, drawn to be read at
the 900 px a report or a browser gives it: text of at least 10 pt at the 100 dpi it is saved at."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: runs happen on headless machines

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.calibration import CalibrationDisplay
from sklearn.metrics import (
    ConfusionMatrixDisplay,
    PrecisionRecallDisplay,
    RocCurveDisplay,
)

from pneumo_exp.evaluation.measure import thresholded_metrics

CLASS_NAMES = ("normal", "pneumonia")
TEXT_PT = 10  # the smallest text a figure carries: 14 px at 100 dpi

# learning_curves' panels, train and val_: what Keras logs per epoch (models/train.py compiles them)
CURVES = ("loss", "auc", "accuracy", "precision", "recall")


def learning_curves(history: dict[str, list[float]]) -> Figure:
    """Train against validation per epoch, a panel per CURVES key, three to a row so the grid reads
    at 900 px. A key the run never logged (a run from before it was compiled in, resumed) gets no
    panel rather than failing the run at its end."""
    logged = [name for name in CURVES if history.get(name) or history.get(f"val_{name}")]
    rows = max(1, -(-len(logged) // 3))
    fig, axes = plt.subplots(rows, 3, figsize=(10, 3.4 * rows), squeeze=False)
    for ax in axes.flat[len(logged):]:
        ax.set_visible(False)
    for ax, name in zip(axes.flat, logged, strict=False):
        for split, label in (("", "train"), ("val_", "validation")):
            values = history.get(f"{split}{name}") or []
            if values:
                ax.plot(np.arange(1, len(values) + 1), values, marker=".", label=label)
        ax.set(title=name, xlabel="epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend()
    fig.tight_layout()
    return fig


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray) -> Figure:
    """Counts of each (true, predicted) class pair."""
    display = ConfusionMatrixDisplay.from_predictions(labels, predicted, labels=[0, 1],
                                                      display_labels=CLASS_NAMES, colorbar=False)
    return display.figure_


def operating_point(display: RocCurveDisplay | PrecisionRecallDisplay, x: float, y: float,
                    label: str, title: str) -> Figure:
    """`display`'s figure with the run's operating point marked (a reader asks where on the curve
    the reported sensitivity sits), its values in the legend, and the split named in the title."""
    ax = display.ax_
    ax.plot([x], [y], "o", color="crimson", markersize=9, zorder=3, label=label)
    ax.set_title(title)
    ax.legend(loc="lower right" if isinstance(display, RocCurveDisplay) else "lower left")
    return display.figure_


def roc_curve(labels: np.ndarray, probabilities: np.ndarray, split: str, threshold: float) -> Figure:
    """Sensitivity against 1 - specificity over every threshold, with the chance line and the point
    at the threshold chosen on validation."""
    at = thresholded_metrics(labels, probabilities, threshold)
    display = RocCurveDisplay.from_predictions(labels, probabilities, name=split, plot_chance_level=True)
    display.ax_.set(xlabel="1 - specificity (false positive rate)", ylabel="sensitivity (true positive rate)")
    return operating_point(display, 1 - at["specificity"], at["recall"],
                           f"threshold {threshold:.3f} (chosen on validation):\nsensitivity "
                           f"{at['recall']:.3f}, specificity {at['specificity']:.3f}",
                           f"ROC, {split} ({len(labels)} images)")


def pr_curve(labels: np.ndarray, probabilities: np.ndarray, split: str, threshold: float) -> Figure:
    """Precision against recall over every threshold, with the chance level (the prevalence) and the
    point at the threshold chosen on validation."""
    at = thresholded_metrics(labels, probabilities, threshold)
    display = PrecisionRecallDisplay.from_predictions(labels, probabilities, name=split,
                                                      plot_chance_level=True)
    display.ax_.set(xlabel="recall (sensitivity)", ylabel="precision (positive predictive value)")
    return operating_point(display, at["recall"], at["precision"],
                           f"threshold {threshold:.3f} (chosen on validation):\nprecision "
                           f"{at['precision']:.3f}, recall {at['recall']:.3f}",
                           f"Precision-recall, {split} ({len(labels)} images)")


def reliability(labels: dict[str, np.ndarray], probabilities: dict[str, np.ndarray]) -> Figure:
    """Calibration: observed pneumonia rate against predicted probability, per split (10 bins). The
    diagonal is drawn once here: CalibrationDisplay would add its own per split."""
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.plot([0, 1], [0, 1], "k:", label="perfectly calibrated")
    for split in labels:
        CalibrationDisplay.from_predictions(labels[split], probabilities[split], n_bins=10, ref_line=False,
                                            name=f"{split} ({len(labels[split])} images)", ax=ax)
    ax.set(title="Reliability (10 equal-width bins)", xlabel="mean predicted probability of pneumonia",
           ylabel="fraction pneumonia")
    ax.legend(loc="upper left")
    return fig


def heatmaps(images: np.ndarray, maps: np.ndarray, titles: list[str], caption: str = "",
             columns: int = 4) -> Figure:
    """Each image above itself overlaid with its heatmap (Grad-CAM), titled, up to `columns` images
    to a row: eight in one row were 6 px text at 900 px. `caption` says what the titles mean."""
    columns = max(1, min(columns, len(images)))
    rows = -(-len(images) // columns)
    fig, axes = plt.subplots(2 * rows, columns, figsize=(2.6 * columns, 5.6 * rows + 0.5 * bool(caption)),
                             squeeze=False, layout="constrained")  # room for every title
    for ax in axes.flat:
        ax.axis("off")
    for k, (image, heat, title) in enumerate(zip(images, maps, titles, strict=True)):
        row, column = divmod(k, columns)
        plain, overlaid = axes[2 * row, column], axes[2 * row + 1, column]
        for ax in (plain, overlaid):
            ax.imshow(image[..., 0], cmap="gray")
        overlaid.imshow(heat, cmap="jet", alpha=0.4, vmin=0, vmax=1)
        plain.set_title(title, fontsize=TEXT_PT)
    if caption:
        fig.suptitle(caption, fontsize=TEXT_PT)
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


def save(figure: Figure, path: Path) -> None:
    """PNG without a software-version stamp, so the same data gives the same file."""
    figure.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(figure)
