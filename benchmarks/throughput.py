"""Training throughput of the seed CNN three ways, in one run, on the same images and split:

  (a) notebook: the notebook's tf.data pipeline as written (read_file -> decode_jpeg -> resize, every
      epoch), in the environment as the user has it: TensorFlow decides oneDNN itself (on by default
      on CPUs with AVX512_VNNI or newer, off on older ones) and the line says what it chose;
  (b) harness: `python -m pneumo_exp`'s real path end to end (decoded-image cache, tf.data from
      memory, MLflow logging on);
  (c) ceiling: the model alone, fed float tensors already in memory (tf.data autotuning off, as in
      the harness: its thread stalls the end of some epochs for 20-40 s).

Like for like: every variant times the same work, the training steps of an epoch (train_seconds:
up to its validation, which differs between them), over the same number of epochs, the first of
which (graph tracing) is left out. (a), (b) and (c) run `--repeats` times in turns (a, b, c, a, b, c),
so that a slow spell of a shared machine hits all alike, and each variant's images/s is the median
over all its steady epochs, printed with their min and max. An extra, labelled line runs (a) with
oneDNN forced off (TF_ENABLE_ONEDNN_OPTS=0), as on a CPU where TensorFlow leaves it off. Then, on
the 16 full-resolution originals repeated to 1,008 files: decoding every epoch vs the harness after
its cache is built, in turns as well, and decoding alone (no model), which estimates what a cache
can gain when decoding shares the cores with training. Every variant runs in a fresh process (oneDNN
is fixed at TensorFlow's import). The last line is `ratio_vs_notebook=b/a ratio_vs_ceiling=b/c`.

    python benchmarks/throughput.py [--data DIR] [--image-size 180] [--batch-size 16]
                                     [--epochs 3] [--repeats 2] [--fullres-epochs 6]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
SHARED = PROJECT.parent / "shared" / "data"


def config(overrides: list[str]):
    """The project's config, composed as the CLI composes it."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(PROJECT / "conf"), version_base="1.3"):
        return compose("config", overrides=overrides)


def split_files(root: Path) -> dict[str, tuple[list[str], list[int]]]:
    """The harness's own patient split of `root` (default config), as file lists and labels."""
    from pneumo_exp.data import folder

    found = folder.split_files(config(["data=chest_xray", f"data.root={root}"]).data)
    return {name: ([str(p) for p in found.files[name]], found.labels[name].tolist())
            for name in ("train", "val")}


def rates(n_images: int, steady_seconds: list[float]) -> dict[str, float]:
    """Images/s over steady epochs (after each run's first, which traces graphs and warms caches),
    as the median with the min and max: a robust measure of a variant on a shared machine, taken
    alike for every variant."""
    per_epoch = [n_images / s for s in steady_seconds]
    return {"median": float(statistics.median(per_epoch)), "min": min(per_epoch), "max": max(per_epoch),
            "epochs": len(per_epoch)}


def fit_timed(model, train_ds, val_ds, epochs: int, steps: int | None = None) -> list[float]:
    from pneumo_exp.models.train import EpochTimer

    timer_logs: list[float] = []

    class Keep(EpochTimer):
        def on_epoch_end(self, epoch, logs=None):
            super().on_epoch_end(epoch, logs)
            timer_logs.append(logs["train_seconds"])  # the training steps: the same work in each

    model.fit(train_ds, validation_data=val_ds, epochs=epochs, steps_per_epoch=steps, callbacks=[Keep()],
              verbose=2)
    return timer_logs


def seed_cnn(size: int):
    """The model compiled exactly as the harness compiles it (Adam, cross-entropy, its metrics)."""
    import numpy as np

    from pneumo_exp.models import imbalance, train
    from pneumo_exp.models.seed_cnn import seed_cnn

    model = seed_cnn((size, size, 3))
    plan = imbalance.plan(config([]).imbalance, np.array([0, 1]))
    train.compile_model(model, plan, 1e-3)
    return model


def notebook_dataset(args: argparse.Namespace, files: list[str], labels: list[int], shuffle: bool):
    """The notebook's input pipeline: every pass reads, decodes and resizes every JPEG."""
    import tensorflow as tf

    def process_path(path, label):
        image = tf.image.decode_jpeg(tf.io.read_file(path), channels=3)
        return tf.image.resize(image, [args.image_size, args.image_size]), label

    ds = tf.data.Dataset.from_tensor_slices((files, tf.constant(labels, tf.float32)))
    ds = ds.shuffle(1000) if shuffle else ds
    return ds.map(process_path, num_parallel_calls=tf.data.AUTOTUNE).batch(args.batch_size).prefetch(
        tf.data.AUTOTUNE)


def child_notebook(args: argparse.Namespace) -> dict:
    """The notebook's way of training: decoding every epoch."""
    import tensorflow  # noqa: F401  before pneumo_exp, which turns oneDNN on where it is not set

    split = split_files(Path(args.data))
    seconds = fit_timed(seed_cnn(args.image_size), notebook_dataset(args, *split["train"], True),
                        notebook_dataset(args, *split["val"], False), args.epochs)
    return {"n_images": len(split["train"][0]), "train_seconds": seconds}


def child_decode(args: argparse.Namespace) -> dict:
    """Decoding alone, no model: about what decoding every epoch adds to each epoch."""
    split = split_files(Path(args.data))
    seconds = []
    for _ in range(args.epochs):
        started = time.perf_counter()
        for _ in notebook_dataset(args, *split["train"], True):
            pass
        seconds.append(time.perf_counter() - started)
    return {"n_images": len(split["train"][0]), "train_seconds": seconds}


def child_ceiling(args: argparse.Namespace) -> dict:
    """The same model on float tensors already in memory: nothing left to feed."""
    import numpy as np
    import tensorflow as tf
    from PIL import Image

    from pneumo_exp.data import pipeline

    split = split_files(Path(args.data))

    def tensors(name):
        files, labels = split[name]
        pixels = np.stack([np.asarray(Image.open(f).convert("RGB").resize((args.image_size,) * 2))
                           for f in files]).astype("float32")
        return pipeline.without_autotuning(tf.data.Dataset.from_tensor_slices(
            (pixels, np.array(labels, "float32"))).batch(args.batch_size).prefetch(tf.data.AUTOTUNE))

    seconds = fit_timed(seed_cnn(args.image_size), tensors("train"), tensors("val"), args.epochs)
    return {"n_images": len(split["train"][0]), "train_seconds": seconds}


def child_harness(args: argparse.Namespace) -> dict:
    """`run_experiment` as the CLI runs it, with every MLflow-facing call of tracking/record.py timed."""
    import mlflow

    from pneumo_exp import data
    from pneumo_exp.run import run_experiment
    from pneumo_exp.tracking import record, store

    spent: dict[str, float] = {}
    timed_calls = [(store, "open_experiment"), *((record, name) for name in (
        "log_config", "log_epoch", "log_metrics", "log_lines", "log_predictions", "log_validation",
        "log_figure", "log_model"))]
    for module, name in timed_calls:
        original = getattr(module, name)

        def timed(*a, _original=original, _name=name, **k):
            started = time.perf_counter()
            try:
                return _original(*a, **k)
            finally:
                spent[_name] = spent.get(_name, 0.0) + time.perf_counter() - started

        setattr(module, name, timed)
    workdir = Path(args.workdir)
    cfg = config(["data=chest_xray", f"data.root={args.data}", f"data.image_size={args.image_size}",
                       f"train.batch_size={args.batch_size}", f"train.epochs={args.epochs}",
                       "train.early_stopping_patience=0", f"data.cache_dir={workdir}/cache",
                       f"tracking.uri=sqlite:///{workdir}/mlflow.db",
                       f"tracking.artifact_location={workdir}/artifacts",
                       f"tracking.backup_dir={workdir}/bk"])
    created = time.perf_counter()
    store.open_experiment(cfg.tracking)  # a store is created once, not per run: set it up first
    store_seconds = time.perf_counter() - created
    spent.clear()
    started = time.perf_counter()
    run_id = run_experiment(cfg).run_id
    wall = time.perf_counter() - started
    run = mlflow.get_run(run_id)
    history = record.epoch_history(run_id, ["train_seconds", "epoch_seconds"])
    n_train = int(run.data.tags["n_train_normal"]) + int(run.data.tags["n_train_pneumonia"])
    again = time.perf_counter()
    second = data.load(cfg.data)  # what the next run of a sweep does: read the cache
    return {"n_images": n_train, "train_seconds": history["train_seconds"],
            "epoch_seconds": history["epoch_seconds"],
            "cache": run.data.tags["data_cache"], "data_load_seconds": run.data.metrics["data_load_seconds"],
            "second_load_seconds": time.perf_counter() - again, "second_cache": second.cache,
            "mlflow_share": sum(spent.values()) / wall, "mlflow_seconds": spent, "wall_seconds": wall,
            "store_creation_seconds": store_seconds}


def run_child(label: str, variant: str, args: argparse.Namespace, data: str, env: dict[str, str],
              epochs: int) -> dict:
    """One variant in a fresh process; its report, with what TensorFlow chose for oneDNN (its import
    says "oneDNN custom operations are on" where they are)."""
    with tempfile.TemporaryDirectory() as workdir:
        command = [sys.executable, __file__, "--child", variant, "--data", data, "--workdir", workdir,
                   "--image-size", str(args.image_size), "--batch-size", str(args.batch_size),
                   "--epochs", str(epochs)]
        result = subprocess.run(command, env={**os.environ, **env}, cwd=PROJECT, capture_output=True,
                                text=True)
    if result.returncode:
        sys.exit(f"{label} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    report = json.loads(result.stdout.strip().splitlines()[-1])
    report["onednn"] = "on" if "oneDNN custom operations are on" in result.stderr else "off"
    steady = ", ".join(f"{s:.1f}" for s in report["train_seconds"][1:])
    print(f"{label:>24}: timed {report['train_seconds'][0]:.1f} s (first epoch), then {steady} s; "
          f"oneDNN {report['onednn']}; peak RSS {report['peak_rss_gb']:.2f} GB", flush=True)
    return report


def in_turns(variants: list[tuple[str, str, str, dict[str, str]]], args: argparse.Namespace,
             epochs: int) -> list[dict]:
    """Each (label, variant, data, env) run args.repeats times, taking turns: per variant, the rates
    of all its steady epochs pooled, and its last report (for what else it measured)."""
    pooled: list[list[float]] = [[] for _ in variants]
    reports: list[dict] = [{} for _ in variants]
    for repeat in range(args.repeats):
        for i, (label, variant, data, env) in enumerate(variants):
            reports[i] = run_child(f"{label} #{repeat + 1}", variant, args, data, env, epochs)
            pooled[i] += reports[i]["train_seconds"][1:]
    for i, (label, *_) in enumerate(variants):
        reports[i]["rate"] = rates(reports[i]["n_images"], pooled[i])
        rate = reports[i]["rate"]
        print(f"{label:>24}: {rate['median']:6.1f} img/s median of {rate['epochs']} steady epochs "
              f"(min {rate['min']:.1f}, max {rate['max']:.1f}); oneDNN {reports[i]['onednn']}", flush=True)
    return reports


def fullres_copies(folder: Path, copies: int) -> Path:
    """The 16 original-size JPEGs repeated `copies` times (symlinks) in the Kaggle layout."""
    root = Path(tempfile.mkdtemp(prefix="fullres_"))
    for source in sorted(folder.glob("chest_xray/val/*/*.jpeg")):
        target = root / "train" / source.parent.name
        target.mkdir(parents=True, exist_ok=True)
        for copy in range(copies):
            (target / f"{source.stem}-copy{copy}.jpeg").symlink_to(source)
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(SHARED / "chest_xray_pneumonia_224" / "chest_xray"))
    parser.add_argument("--fullres", default=str(SHARED / "chest_xray_pneumonia_val_original"))
    parser.add_argument("--image-size", type=int, default=180)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2, help="runs of (a), (b) and (c), in turns")
    parser.add_argument("--fullres-epochs", type=int, default=6, help="epochs of the short full-res runs")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        report = {"notebook": child_notebook, "harness": child_harness, "ceiling": child_ceiling,
                  "decode": child_decode}[
            args.child](args)
        report["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(json.dumps(report))
        return
    if not Path(args.data).is_dir():
        sys.exit(f"skipped: no data at {args.data} (the real Kermany images; pass --data DIR)")
    print(f"{os.cpu_count()} CPU cores, {args.image_size}x{args.image_size}, batch {args.batch_size}, "
          f"{args.epochs} epochs (the first is warm-up), data {args.data}", flush=True)
    variants = [("(a) notebook", "notebook"), ("(b) harness", "harness"), ("(c) ceiling", "ceiling")]
    a, b, c = in_turns([(label, variant, args.data, {}) for label, variant in variants], args, args.epochs)
    off = run_child("(a) oneDNN forced off", "notebook", args, args.data, {"TF_ENABLE_ONEDNN_OPTS": "0"},
                    args.epochs)
    off_rate = rates(off["n_images"], off["train_seconds"][1:])["median"]
    print(f"extra: the notebook with oneDNN forced off (as TensorFlow leaves it on CPUs without AVX512_VNNI) "
          f"{off_rate:.1f} img/s; harness / that = {b['rate']['median'] / off_rate:.2f}")
    calls = ", ".join(f"{name} {seconds:.2f}" for name, seconds in sorted(b["mlflow_seconds"].items()))
    print(f"harness: MLflow logging {100 * b['mlflow_share']:.2f}% of the run's {b['wall_seconds']:.0f} s "
          f"(seconds: {calls}; creating the empty store beforehand took {b['store_creation_seconds']:.1f} s)")
    print(f"harness (its last run): whole epochs {', '.join(f'{s:.1f}' for s in b['epoch_seconds'])} s "
          f"(with validation; the first traces graphs); data load {b['data_load_seconds']:.1f} s "
          f"(cache {b['cache']}: decoding), the next run's load {b['second_load_seconds']:.2f} s (cache "
          f"{b['second_cache']}: no decoding); peak RSS {b['peak_rss_gb']:.2f} GB")

    if Path(args.fullres).is_dir():
        root = fullres_copies(Path(args.fullres), 63)
        decode, cached = in_turns([("full-res decode", "notebook", str(root), {}),
                                   ("full-res cached", "harness", str(root), {})], args, args.fullres_epochs)
        alone = run_child("full-res decoding alone", "decode", args, str(root), {}, 3)
        alone_rate = rates(alone["n_images"], alone["train_seconds"][1:])["median"]
        speedup = cached["rate"]["median"] / decode["rate"]["median"]
        # Decoding and training share the cores, so decoding every epoch adds about its own time to
        # each epoch: what caching gains is about 1 + (cached rate / decoding-alone rate).
        parts = 1 + cached["rate"]["median"] / alone_rate
        print(f"full resolution, 1008 files: decode every epoch {decode['rate']['median']:.1f} img/s, "
              f"cached {cached['rate']['median']:.1f} img/s: ratio {speedup:.2f} (decoding alone runs at "
              f"{alone_rate:.0f} img/s: the parts add up to {parts:.2f}); cache build "
              f"{cached['data_load_seconds']:.1f} s, cached load {cached['second_load_seconds']:.2f} s")
    print(f"ratio_vs_notebook={b['rate']['median'] / a['rate']['median']:.2f} "
          f"ratio_vs_ceiling={b['rate']['median'] / c['rate']['median']:.2f} "
          f"(medians; TensorFlow chose oneDNN {a['onednn']} for the notebook)")


if __name__ == "__main__":
    main()
