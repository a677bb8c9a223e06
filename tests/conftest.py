"""Shared fixtures: the real Hydra config, tiny generated datasets, a throwaway MLflow store."""

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from PIL import Image

PROJECT = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT.parent / "shared" / "data"
REAL_NPZ = SHARED_DATA / "pneumoniamnist" / "pneumoniamnist.npz"
REAL_KAGGLE = SHARED_DATA / "chest_xray_pneumonia_224" / "chest_xray"
REAL_ORIGINALS = SHARED_DATA / "chest_xray_pneumonia_val_original"
TINY = ["data.image_size=32", "train.epochs=1", "train.batch_size=8"]

needs_real_npz = pytest.mark.skipif(not REAL_NPZ.is_file(),
                                    reason=f"real data absent: {REAL_NPZ} not found")
needs_real_kaggle = pytest.mark.skipif(not REAL_KAGGLE.is_dir(),
                                       reason=f"real data absent: {REAL_KAGGLE} not found")
needs_real_originals = pytest.mark.skipif(not REAL_ORIGINALS.is_dir(),
                                          reason=f"real data absent: {REAL_ORIGINALS} not found")


def make_config(overrides: list[str]) -> DictConfig:
    """The project's real config, composed as `python -m pneumo_exp OVERRIDES` would."""
    with initialize_config_dir(config_dir=str(PROJECT / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def xray(label: int, rng: np.random.Generator, size: int = 48) -> Image.Image:
    """A fake X-ray: pneumonia images carry a bright blob, so a model can learn something."""
    pixels = rng.normal(90, 20, (size, size))
    if label:
        pixels[size // 4: size // 2, size // 4: size // 2] += 100
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def write_kaggle_layout(root: Path, patients: int = 10, with_test: bool = False) -> Path:
    """root/chest_xray/{train,val[,test]}/{NORMAL,PNEUMONIA}/ with Kermany-style file names."""
    rng = np.random.default_rng(0)
    splits = {"train": range(patients), "val": range(100, 102)}
    if with_test:
        splits["test"] = range(200, 204)
    for split, ids in splits.items():
        for pid in ids:
            for image in range(2):
                normal = root / "chest_xray" / split / "NORMAL" / f"IM-{pid:04d}-{image:04d}.jpeg"
                sick = root / "chest_xray" / split / "PNEUMONIA" / f"person{pid}_bacteria_{image}.jpeg"
                for path, label in ((normal, 0), (sick, 1)):
                    path.parent.mkdir(parents=True, exist_ok=True)
                    xray(label, rng).save(path)
    return root


@pytest.fixture(scope="session", autouse=True)
def decoded_image_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tests (and the CLI processes they start) cache decoded images here, not in ~/.cache."""
    folder = tmp_path_factory.mktemp("decoded_image_cache")
    os.environ["PNEUMO_EXP_CACHE"] = str(folder)
    return folder


@pytest.fixture(scope="session", autouse=True)
def in_own_folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Each test process (each parallel worker) runs in its own folder, fixtures included: what the
    config puts under mlruns/ by default (training backups, keyed by config) lands there, not in the
    project, and never in a folder that another worker shares."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path_factory.mktemp("cwd"))
        yield


@pytest.fixture(scope="session")
def kaggle_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Kaggle-style folder without test/, as ../shared has it."""
    return write_kaggle_layout(tmp_path_factory.mktemp("kaggle")) / "chest_xray"


@pytest.fixture(scope="session")
def tiny_npz(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A small npz in the MedMNIST layout (28x28, labels shaped (n, 1)) and its md5."""
    rng = np.random.default_rng(1)
    arrays = {}
    for split, n in (("train", 40), ("val", 16), ("test", 16)):
        labels = np.array([i % 4 != 0 for i in range(n)], dtype=np.uint8)  # 3:1 like the real data
        arrays[f"{split}_images"] = np.stack([np.asarray(xray(y, rng, 28)) for y in labels])
        arrays[f"{split}_labels"] = labels[:, None]
    path = tmp_path_factory.mktemp("npz") / "tiny.npz"
    np.savez(path, **arrays)
    return path, hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def store(tmp_path: Path) -> list[str]:
    """Overrides that send the run to a fresh MLflow store in tmp_path."""
    return [f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
            f"tracking.artifact_location={tmp_path}/artifacts"]


@pytest.fixture
def npz_overrides(tiny_npz: tuple[Path, str]) -> list[str]:
    path, md5 = tiny_npz
    return ["data=pneumoniamnist", f"data.path={path}", f"data.md5={md5}"]
