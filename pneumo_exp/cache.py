"""The decoded-image cache: each image is decoded and resized once, then every later run and every
parallel job of a sweep memory-maps the same uint8 array instead of decoding again."""

import fcntl
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np


def _write_atomically(path: Path, write: Callable[[object], None]) -> None:
    """Readers see the whole file or none: write beside it, then rename over it."""
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    with open(partial, "wb") as handle:
        write(handle)
    os.replace(partial, path)


def load_or_build(cache_dir: Path | None, key: str, build: Callable[[], tuple[np.ndarray, dict]]
                  ) -> tuple[np.ndarray, dict, str]:
    """(images, metadata, "hit" | "miss" | "off"): from `cache_dir/key.npy` if there, else built
    and stored. A lock file makes parallel jobs wait for one builder instead of all decoding."""
    if cache_dir is None:
        return *build(), "off"
    cache_dir.mkdir(parents=True, exist_ok=True)
    images_path, meta_path = cache_dir / f"{key}.npy", cache_dir / f"{key}.json"
    with open(cache_dir / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if meta_path.exists() and images_path.exists():
            return np.load(images_path, mmap_mode="r"), json.loads(meta_path.read_text()), "hit"
        images, meta = build()
        _write_atomically(images_path, lambda handle: np.save(handle, images))
        _write_atomically(meta_path, lambda handle: handle.write(json.dumps(meta).encode()))
        return images, meta, "miss"
