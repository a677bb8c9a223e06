"""Tracking: the MLflow store (store.py), a run's lifecycle (lifecycle.py), what it records (record.py),
what a run is before it opens (jobs.py), what it logs and prints at its end (results.py), and sweeps
(sweep.py, multirun.py, search.py). This package file imports nothing, so a schema beside it loads no
MLflow."""
