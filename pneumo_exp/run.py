"""The path of one run: config checked → MLflow run opened → data → imbalance plan and
augmentation → model → fit → threshold chosen on validation → test scored once → logged."""

import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from pneumo_exp import config, data


@dataclass(frozen=True)
class RunResult:
    run_id: str
    scores: dict[str, float]  # test_* metrics (at the validation-chosen threshold)
    val_auc: float  # the final model's validation AUC: what a search optimizes
    skipped: bool = False  # True: this sweep already had a FINISHED run of this config


def test_scores(metrics: dict[str, float]) -> dict[str, float]:
    """The test_* metrics at the validation-chosen threshold (not their _at_0.5 twins)."""
    return {k: v for k, v in metrics.items() if k.startswith("test_") and not k.endswith("_at_0.5")}


def load_data(cfg: DictConfig) -> data.Data:
    """The `data` stage, logged into the active run: what was left out or duplicated (with a warning),
    whether patients straddle splits, image counts, and how long loading took."""
    from pneumo_exp import tracking  # imported already by run_experiment

    started = time.perf_counter()
    dataset = data.load(cfg)
    load_seconds = time.perf_counter() - started
    for problem, items in (("files left out", dataset.skipped),
                           ("images found in two splits", dataset.duplicates)):
        if items:
            print(f"warning: {len(items)} {problem} (listed in the run's data/); first: {items[0]}")
    shared = dataset.shared_patients()  # empty: not every image names its patient
    if any(shared.values()):  # only an official test/ folder can share patients with train/
        print(f"warning: the same patients in two splits: {shared}")
    tags = {"data_fingerprint": dataset.fingerprint, "test_split": dataset.test_source,
            "data_cache": dataset.cache,
            "patient_disjoint": "unknown" if not shared else str(not any(shared.values())).lower(),
            **{key: str(value) for key, value in dataset.counts().items()}}
    if dataset.source_size:  # predict makes new images as the npz's were made
        tags["source_image_size"] = str(dataset.source_size)
    tracking.set_tags(tags)
    tracking.log_metrics({"data_load_seconds": load_seconds, "n_skipped_files": len(dataset.skipped),
                          "n_duplicates_across_splits": len(dataset.duplicates), **shared})
    tracking.log_lines(dataset.skipped, "data/skipped_files.txt")
    tracking.log_lines(dataset.duplicates, "data/duplicates_across_splits.txt")
    return dataset


def run_experiment(cfg: DictConfig, overrides: Sequence[str] = ()) -> RunResult:
    """Run the experiment `cfg` describes and log it as one MLflow run.

    In a sweep (a multirun) the run is a child of the sweep's parent run, and a config that
    already FINISHED in this sweep is skipped unless tracking.rerun=true. With train.resume=true the
    newest interrupted run of this config continues from its last completed epoch.
    """
    config.check(cfg)
    data.check(cfg.data)
    from pneumo_exp import tracking  # MLflow takes a second to import: only once the checks passed

    started = time.perf_counter()
    uri = tracking.open_experiment(cfg.tracking)
    sweep = tracking.current_sweep()
    name = f"{cfg.data.name}-{cfg.imbalance.name}-{cfg.regularization.name}-seed{cfg.seed}"
    config_hash = tracking.config_hash(cfg)
    if sweep and not cfg.tracking.rerun:
        done = tracking.finished_run(sweep[0], config_hash)
        if done:
            print(f"skipped {name}: already FINISHED in sweep {sweep[0]} as run {done.info.run_id}")
            scores = test_scores(done.data.metrics)
            return RunResult(done.info.run_id, scores, done.data.metrics["final_val_auc"], skipped=True)
    backup = Path(cfg.tracking.backup_dir) / config_hash
    resumed = tracking.interrupted_run(config_hash, sweep and sweep[0]) if cfg.train.resume else None
    if not (resumed and backup.is_dir()):
        if cfg.train.resume:
            print(f"train.resume: no interrupted run of {name} with a backup in {backup}; starting anew")
        resumed = None
        shutil.rmtree(backup, ignore_errors=True)  # a fresh run starts from epoch 1
    tags = {group: cfg[group].name for group in config.GROUPS}
    tags |= {"overrides": " ".join(overrides), "config_hash": config_hash,
             "cell_hash": tracking.config_hash(cfg, "seed"), **tracking.git_tags()}
    if sweep:
        tags |= {"sweep_id": sweep[0], "sweep_role": "child"}
    # The run opens before the data loads, so that whatever fails from here on ends a FAILED run
    # (a sweep counts its jobs from MLflow).
    with tracking.run(name, tags, parent_run_id=sweep and sweep[1],
                      resume_run_id=resumed and resumed.info.run_id) as active:
        tracking.log_config(cfg)
        dataset = load_data(cfg.data)

        # TensorFlow loads only now (~5 s), after config and data have had their chance to fail.
        import keras

        from pneumo_exp import augment, explain, imbalance, models, plots, train

        train.configure(cfg.train)
        keras.backend.clear_session()  # jobs of a multirun share the process: start each afresh
        keras.utils.set_random_seed(cfg.seed)
        plan = imbalance.plan(cfg.imbalance, dataset.train.labels)
        batch, channels = cfg.train.batch_size, cfg.data.channels

        def training_batches(seed: int):
            return augment.apply(data.pipeline(dataset.train, batch, channels, shuffle=True,
                                               balanced=plan.balanced_batches, seed=seed), cfg.augment, seed)

        val_ds = data.pipeline(dataset.val, batch, channels)
        test_ds = data.pipeline(dataset.test, batch, channels)
        steps_per_epoch = math.ceil(len(dataset.train.labels) / batch)
        steps = steps_per_epoch if plan.balanced_batches else None  # else the data's own end
        sample = next(iter(training_batches(cfg.seed).unbatch().batch(16)))
        tracking.log_figure(plots.image_grid(sample[0].numpy(), sample[1].numpy()), "train_batch")

        size = cfg.data.image_size
        decay_steps = cfg.train.epochs * steps_per_epoch
        members, epochs_trained = [], 0
        for k in range(cfg.train.members):
            # Member k trains from seed + 1000k: its own initial weights, shuffling and augmentation.
            # Its epoch metrics are logged with the prefix member{k+1}_ (none for the first); a
            # finished member's weights wait in the backup folder, so a resumed run skips it.
            member_seed, prefix = cfg.seed + 1000 * k, f"member{k + 1}_" if k else ""
            keras.utils.set_random_seed(member_seed)
            model = models.build(cfg.model, cfg.regularization, (size, size, channels))
            finished = backup / f"member{k + 1}.weights.h5"
            if finished.is_file():
                model.load_weights(finished)
            else:
                train.compile_model(model, plan, cfg.train.learning_rate, cfg.train.jit_compile,
                                    decay_steps if cfg.train.lr_schedule == "cosine" else 0,
                                    cfg.train.ema_momentum, cfg.train.weight_decay)

                def log_epoch(epoch: int, logs: dict[str, float], prefix: str = prefix) -> None:
                    tracking.log_epoch(epoch, {prefix + key: value for key, value in logs.items()})

                train.fit(model, training_batches(member_seed), val_ds, cfg.train, plan, steps,
                          log_epoch, backup / f"member{k + 1}")
                if cfg.train.members > 1:
                    model.save_weights(finished)
            keys = [f"{prefix}{split}{curve}" for curve in plots.CURVES for split in ("", "val_")]
            history = {key.removeprefix(prefix): values
                       for key, values in tracking.epoch_history(active.info.run_id, keys).items()}
            tracking.log_figure(plots.learning_curves(history), f"learning_curves_{prefix}".rstrip("_"))
            epochs_trained += len(history["loss"])
            members.append(model)
        shutil.rmtree(backup, ignore_errors=True)

        # The model kept (best val_auc; the members' mean), with test-time augmentation if asked:
        # threshold chosen on validation, then test scored once.
        model = models.with_tta(models.averaged(members), cfg.train.tta_shift)
        labels = {"val": dataset.val.labels, "test": dataset.test.labels}
        probabilities = {"val": train.predict(model, val_ds), "test": train.predict(model, test_ds)}
        threshold, metrics = train.assess(labels, probabilities, plan, cfg.train)
        tracking.log_metrics(metrics | {"epochs_trained": epochs_trained,
                                        "run_seconds": time.perf_counter() - started})
        y, p = labels["test"], probabilities["test"]
        tracking.log_predictions(y, p)
        figures = {"confusion_matrix": plots.confusion_matrix(y, p >= threshold),
                   "roc_curve": plots.roc_curve(y, p), "pr_curve": plots.pr_curve(y, p),
                   "reliability": plots.reliability(labels, probabilities),
                   **explain.figures(model, dataset.test.images, y, p, threshold, channels)}
        for figure_name, figure in figures.items():
            tracking.log_figure(figure, figure_name)
        first = next(iter(test_ds))[0].numpy()[:1]  # one test image as fed: the model's signature
        tracking.log_model(model, first, p[:1, None])

    print(f"\nrun {active.info.run_id} ({name}) finished in {time.perf_counter() - started:.0f} s; "
          f"test split: {dataset.test_source}")
    scores = test_scores(metrics)
    print(f"  at the threshold chosen on validation ({cfg.train.threshold}): {threshold:.3f}")
    print("  " + "  ".join(f"{k}={v:.3f}" for k, v in scores.items()))
    print(f"  open the MLflow UI: {tracking.ui_command(uri)}")
    return RunResult(active.info.run_id, scores, metrics["final_val_auc"])
