"""Wall time of one 4-job sweep run one job after another vs `launcher=parallel launcher.jobs=4`,
into a local SQLite store and through an MLflow tracking server, in one run:

    python benchmarks/parallel.py [--npz FILE] [--epochs 2] [--image-size 64]

Each sweep is `python -m pneumo_exp -m seed=0,1,2,3` on PneumoniaMNIST into a fresh store. For each
it prints the wall time, the child runs FINISHED, lost (fewer than 4) and left RUNNING, and at the end
`ratio_sequential_over_parallel_sqlite=… ratio_sequential_over_parallel_server=…`.
"""

import argparse
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
JOBS = 4


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


def sweep(label: str, launcher: list[str], tracking: list[str], args: argparse.Namespace,
          folder: Path) -> float:
    import mlflow

    command = [sys.executable, "-m", "pneumo_exp", "-m", f"seed={','.join(map(str, range(JOBS)))}",
               f"data.path={args.npz}", f"data.image_size={args.image_size}",
               f"train.epochs={args.epochs}", f"hydra.sweep.dir={folder}/sweep", *launcher, *tracking]
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
    print(f"{label:>22}: {wall:6.1f} s wall, {finished} FINISHED, {JOBS - len(children)} lost, "
          f"{running} RUNNING", flush=True)
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--npz", default=str(NPZ))
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=64)
    args = parser.parse_args()
    if not Path(args.npz).is_file():
        sys.exit(f"skipped: no data at {args.npz} (pneumoniamnist.npz; pass --npz FILE)")
    print(f"{os.cpu_count()} CPU cores; {JOBS} jobs of {args.epochs} epochs at {args.image_size} px")
    sequential = ["launcher=local"]
    parallel = ["launcher=parallel", f"launcher.jobs={JOBS}"]
    ratios = {}
    with tempfile.TemporaryDirectory() as tmp:
        for store in ("sqlite", "server"):
            walls = []
            for name, launcher in (("sequential", sequential), ("parallel", parallel)):
                folder = Path(tmp) / f"{store}-{name}"
                folder.mkdir()
                if store == "sqlite":
                    tracking = [f"tracking.artifact_location={folder}/artifacts",
                                f"tracking.uri=sqlite:///{folder}/mlflow.db"]
                    walls.append(sweep(f"{name}, {store}", launcher, tracking, args, folder))
                else:
                    server, uri = start_server(folder)
                    try:
                        walls.append(sweep(f"{name}, {store}", launcher,
                                           ["tracking=server", f"tracking.uri={uri}"], args, folder))
                    finally:
                        os.killpg(server.pid, signal.SIGTERM)
                        server.wait(30)
            ratios[store] = walls[0] / walls[1]
    print(" ".join(f"ratio_sequential_over_parallel_{store}={ratio:.2f}" for store, ratio in ratios.items()))


if __name__ == "__main__":
    main()
