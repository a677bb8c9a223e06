"""The decoded-image cache: each image is decoded and resized once, then every later run and every
parallel job of a sweep memory-maps the same uint8 array instead of decoding again."""

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from filelock import FileLock


def _write_atomically(path: Path, write: Callable[[object], None]) -> None:
    """Readers see the whole file or none: write beside it, then rename over it (a failed write
    leaves nothing behind)."""
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    try:
        with open(partial, "wb") as handle:
            write(handle)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def load_or_build(cache_dir: Path | None, key: str, build: Callable[[], tuple[np.ndarray, dict]]
                  ) -> tuple[np.ndarray, dict, str]:
    """(images, metadata, "hit" | "miss" | "off"): from `cache_dir/key.npy` if there, else built
    and stored. A lock file (filelock: flock off Windows, LockFileEx on it) makes parallel jobs, and
    threads, wait for one builder instead of all decoding. A cache that cannot be used (not
    writable, disk full) costs a warning, never the run."""
    if cache_dir is None:
        return *build(), "off"
    images_path, meta_path = cache_dir / f"{key}.npy", cache_dir / f"{key}.json"
    lock_path = cache_dir / f"{key}.lock"
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        lock_path.touch()
    except OSError as error:
        print(f"warning: image cache {cache_dir} not usable ({error.strerror}): decoding without it; "
              "make it writable or pass data.cache_dir=null")
        return *build(), "off"
    with FileLock(lock_path):
        if meta_path.exists() and images_path.exists():
            return np.load(images_path, mmap_mode="r"), json.loads(meta_path.read_text()), "hit"
        images, meta = build()
        try:
            _write_atomically(images_path, lambda handle: np.save(handle, images))
            _write_atomically(meta_path, lambda handle: handle.write(json.dumps(meta).encode()))
        except OSError as error:
            print(f"warning: could not write the image cache {cache_dir} ({error.strerror}): "
                  "this run goes on without it; free space there or pass data.cache_dir=null")
            return images, meta, "off"
        return images, meta, "miss"
