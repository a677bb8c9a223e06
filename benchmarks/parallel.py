"""Wall time of one sweep run one job at a time against N jobs at once (launcher=parallel), in one run.

For each N of --jobs, into a local SQLite store and through an MLflow tracking server:

    python benchmarks/parallel.py [--npz FILE] [--epochs 2] [--image-size 64]
    python benchmarks/parallel.py --jobs 2,4 --stores sqlite -- +experiment=quick data=chest_xray \\
        data.root=DIR imbalance=none,oversample regularization=bn_dropout,none seed=0,1

The sweep is the overrides after `--` (default: `seed=0,1,2,3` on PneumoniaMNIST, --epochs epochs at
--image-size px), run by `python -m pneumo_exp -m` into a fresh store each time; each parallel job
gets cores / N TensorFlow threads (the launcher's split). For each it prints the wall time, the child
runs FINISHED, lost and left RUNNING, and at the end `ratio_sequential_over_parallelN_STORE=…` per N
and store (above 1: the parallel launcher answers sooner).
"""

import argparse
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
NPZ = PROJECT.parent / "shared" / "data" / "pneumoniamnist" / "pneumoniamnist.npz"


def start_server(folder: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{folder}/server.db", "--artifacts-destination",
         str(folder / "artifacts"), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            urllib.request.urlopen(uri + "/health", timeout=2).close()
            return server, uri
        except OSError:
            time.sleep(0.5)
    sys.exit("mlflow server did not start")


def sweep(label: str, overrides: list[str], launcher: list[str], tracking: list[str], folder: Path) -> float:
    import mlflow

    command = [sys.executable, "-m", "pneumo_exp", "-m", *overrides, f"hydra.sweep.dir={folder}/sweep",
               *launcher, *tracking]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=folder, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode:
        sys.exit(f"{label} failed:\n{result.stderr[-3000:]}")
    uri = tracking[-1].split("=", 1)[1]
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["pneumo_exp"], output_format="list")
    children = [r for r in runs if r.data.tags.get("sweep_role") == "child"]
    finished = sum(r.info.status == "FINISHED" for r in children)
    running = sum(r.info.status == "RUNNING" for r in runs)
    expected = math.prod(len(o.split("=", 1)[1].split(",")) for o in overrides if "=" in o)
    print(f"{label:>26}: {wall:6.1f} s wall, {finished} FINISHED, {expected - len(children)} lost, "
          f"{running} RUNNING", flush=True)
    return wall


def timed_in_store(store: str, label: str, overrides: list[str], launcher: list[str], folder: Path) -> float:
    """The sweep's wall time into a fresh SQLite store or through a fresh tracking server."""
    if store == "sqlite":
        return sweep(label, overrides, launcher, [f"tracking.artifact_location={folder}/artifacts",
                                                  f"tracking.uri=sqlite:///{folder}/mlflow.db"], folder)
    server, uri = start_server(folder)
    try:
        return sweep(label, overrides, launcher, ["tracking=server", f"tracking.uri={uri}"], folder)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--npz", default=str(NPZ))
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--jobs", default="4", help="launcher.jobs values to compare, comma-separated")
    parser.add_argument("--stores", default="sqlite,server", help="sqlite, server or both")
    parser.add_argument("sweep", nargs="*", help="the sweep's overrides (default: 4 seeds on --npz)")
    args = parser.parse_args()
    overrides = args.sweep or ["seed=0,1,2,3", f"data.path={args.npz}",
                               f"data.image_size={args.image_size}", f"train.epochs={args.epochs}"]
    if not args.sweep and not Path(args.npz).is_file():
        sys.exit(f"skipped: no data at {args.npz} (pneumoniamnist.npz; pass --npz FILE)")
    print(f"{os.cpu_count()} CPU cores; python -m pneumo_exp -m {' '.join(overrides)}")
    launchers = {"sequential": ["launcher=local"]} | {
        f"parallel{jobs}": ["launcher=parallel", f"launcher.jobs={jobs}"] for jobs in args.jobs.split(",")}
    ratios = {}
    with tempfile.TemporaryDirectory() as tmp:
        for store in args.stores.split(","):
            walls = {}
            for name, launcher in launchers.items():
                folder = Path(tmp) / f"{store}-{name}"
                folder.mkdir()
                walls[name] = timed_in_store(store, f"{name}, {store}", overrides, launcher, folder)
            ratios |= {f"sequential_over_{name}_{store}": walls["sequential"] / wall
                       for name, wall in walls.items() if name != "sequential"}
    print(" ".join(f"ratio_{key}={ratio:.2f}" for key, ratio in ratios.items()))


if __name__ == "__main__":
    main()
