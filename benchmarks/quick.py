"""What each lever of the quick recipe does to its time to an answer, in one run, on the Kermany folder:

    python benchmarks/quick.py [--data DIR] [--repeats 2] [--seed 0] [VARIANT ...]

Each variant is `python -m pneumo_exp +experiment=quick data=chest_xray data.root=DIR` plus its own
overrides (one quoted string each; the default list: as set, one input channel, bfloat16, batch 32,
batch 64, no figures or model logged), run in a fresh process into one fresh store, `--repeats` times
taking turns, so that a slow spell of a shared machine hits all alike. Per variant: the median
run_seconds (min, max), the median per-epoch seconds of training steps and of validation, the seconds
outside the epochs (loading, scoring, logging), and the best validation AUC. The last line gives each
variant's median run_seconds over the first variant's (below 1 is faster).
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
DATA = PROJECT.parent / "shared" / "data" / "chest_xray_pneumonia_224" / "chest_xray"
VARIANTS = ["", "data.channels=1", "train.precision=mixed_bfloat16", "train.batch_size=32",
            "train.batch_size=64", "tracking.log_figures=false tracking.log_model=false"]


def recipe(args: argparse.Namespace, folder: Path) -> list[str]:
    """The quick recipe on the Kermany folder, into this benchmark's own store and cache."""
    return ["+experiment=quick", "data=chest_xray", f"data.root={args.data}", f"seed={args.seed}",
            f"data.cache_dir={folder}/cache", f"tracking.uri=sqlite:///{folder}/mlflow.db",
            f"tracking.artifact_location={folder}/artifacts", f"tracking.backup_dir={folder}/bk"]


def warm_cache(overrides: list[str]) -> None:
    """Decode the images into the cache once, so that no variant's first run pays for it."""
    from hydra import compose, initialize_config_dir

    from pneumo_exp import data

    with initialize_config_dir(config_dir=str(PROJECT / "conf"), version_base="1.3"):
        data.load(compose("config", overrides=overrides).data)


def timed_run(overrides: list[str], uri: str) -> dict[str, float]:
    """One run in a fresh process; what it logged about its time and its validation AUC."""
    import mlflow

    from pneumo_exp.tracking import record

    result = subprocess.run([sys.executable, "-m", "pneumo_exp", *overrides], cwd=PROJECT,
                            capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"{' '.join(overrides)} failed:\n{result.stderr[-3000:]}")
    mlflow.set_tracking_uri(uri)
    run = mlflow.search_runs(experiment_names=["pneumo_exp"], order_by=["start_time DESC"],
                             max_results=1, output_format="list")[0]
    history = record.epoch_history(run.info.run_id, ["train_seconds", "epoch_seconds", "val_auc"])
    return {"run": run.data.metrics["run_seconds"],
            "train": statistics.median(history["train_seconds"][1:]),
            "validation": statistics.median(e - t for e, t in zip(
                history["epoch_seconds"][1:], history["train_seconds"][1:], strict=True)),
            "outside": run.data.metrics["run_seconds"] - sum(history["epoch_seconds"]),
            "auc": max(history["val_auc"])}


def summary(label: str, measured: list[dict[str, float]]) -> float:
    """Prints one variant's line; returns its median run_seconds."""
    def median(key: str) -> float:
        return statistics.median(m[key] for m in measured)

    runs = [m["run"] for m in measured]
    print(f"{label or 'as set':>52}: run {median('run'):5.1f} s (min {min(runs):.1f}, max {max(runs):.1f}); "
          f"per epoch train {median('train'):4.1f} s, validation {median('validation'):4.1f} s; "
          f"outside epochs {median('outside'):4.1f} s; best val AUC {median('auc'):.4f}", flush=True)
    return median("run")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("variants", nargs="*", default=VARIANTS)
    args = parser.parse_args()
    if not Path(args.data).is_dir():
        sys.exit(f"skipped: no data at {args.data} (the Kermany folder; pass --data DIR)")
    with tempfile.TemporaryDirectory() as tmp:
        base = recipe(args, Path(tmp))
        warm_cache(base)
        measured: list[list[dict[str, float]]] = [[] for _ in args.variants]
        for repeat in range(args.repeats):
            for i, variant in enumerate(args.variants):
                measured[i].append(timed_run(base + variant.split(), f"sqlite:///{tmp}/mlflow.db"))
                print(f"  #{repeat + 1} {variant or 'as set'}: {measured[i][-1]['run']:.1f} s", flush=True)
    medians = [summary(variant, m) for variant, m in zip(args.variants, measured, strict=True)]
    ratios = (f"{variant or 'as set'} {m / medians[0]:.2f}"
              for variant, m in zip(args.variants, medians, strict=True))
    print("run_seconds over the first variant's: " + "; ".join(ratios))


if __name__ == "__main__":
    main()
