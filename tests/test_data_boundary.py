"""pneumo_exp.data's boundaries: no TensorFlow before pipeline.py, and one builder per cache key."""

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from pneumo_exp.data import cache
from tests.helpers import PROJECT, chest_data_cfg, make_config, write_kaggle_layout

# Loads both kinds of source with only pneumo_exp.data (and omegaconf, to read the configs) imported.
LOAD_WITHOUT_TENSORFLOW = """
import json, sys
sys.path.insert(0, sys.argv[1])
from omegaconf import OmegaConf
import pneumo_exp.data as data
found = {}
for name, path in (("chest_xray", sys.argv[2]), ("pneumoniamnist", sys.argv[3])):
    cfg = OmegaConf.load(path)
    data.check(cfg)
    found[name] = [(loaded.cache, loaded.counts()) for loaded in (data.load(cfg), data.load(cfg))]
found["loaded_before_pipeline"] = sorted({"tensorflow", "keras"} & set(sys.modules))
import pneumo_exp.data.pipeline
found["tensorflow_after_pipeline"] = "tensorflow" in sys.modules
print(json.dumps(found))
"""


def test_loading_data_imports_no_tensorflow_until_the_pipeline(tmp_path, tiny_npz):
    npz_path, md5 = tiny_npz
    root = write_kaggle_layout(tmp_path / "data") / "chest_xray"
    configs = {
        "chest_xray": chest_data_cfg(root, f"data.cache_dir={tmp_path}/cache"),
        "pneumoniamnist": make_config(["data=pneumoniamnist", f"data.path={npz_path}", f"data.md5={md5}",
                                       "data.image_size=32"]).data,
    }
    for name, cfg in configs.items():
        (tmp_path / f"{name}.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    done = subprocess.run([sys.executable, "-c", LOAD_WITHOUT_TENSORFLOW, str(PROJECT),
                           str(tmp_path / "chest_xray.yaml"), str(tmp_path / "pneumoniamnist.yaml")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.splitlines()[-1])
    assert found["loaded_before_pipeline"] == []  # neither tensorflow nor keras
    assert found["tensorflow_after_pipeline"] is True
    (first, chest_counts), (second, again) = found["chest_xray"]
    assert (first, second) == ("miss", "hit") and sum(chest_counts.values()) == 48 and again == chest_counts
    assert [state for state, _ in found["pneumoniamnist"]] == ["off", "off"]
    assert found["pneumoniamnist"][0][1] == {"n_train_normal": 10, "n_train_pneumonia": 30,
                                             "n_val_normal": 4, "n_val_pneumonia": 12,
                                             "n_test_normal": 4, "n_test_pneumonia": 12}


# One process of a sweep reaching the same cache key: it counts its build in a file, and builds slowly
# enough that the other process asks while it builds. "nolock" takes the lock away (the control).
BUILD_ONCE = """
import sys, time, contextlib
from pathlib import Path
import numpy as np
from pneumo_exp.data import cache
folder, me, other, lock = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
if lock == "nolock":
    cache.FileLock = lambda path: contextlib.nullcontext()
def build():
    with open(folder / "builds", "a") as counter:
        counter.write(me + "\\n")
    time.sleep(1)
    return np.full((2, 4, 4, 1), 7, np.uint8), {"n": 2}
(folder / f"ready-{me}").touch()
deadline = time.monotonic() + 120
while not (folder / f"ready-{other}").exists() and time.monotonic() < deadline:
    time.sleep(0.005)
images, meta, state = cache.load_or_build(folder / "cache", "key", build)
print(state, int(images.sum()), meta["n"])
"""


def build_in_two_processes(folder: Path, lock: str) -> tuple[list[str], list[str]]:
    """(what each process printed: state, pixel sum, meta; the builds counted)."""
    processes = [subprocess.Popen([sys.executable, "-c", BUILD_ONCE, str(folder), me, other, lock],
                                  cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for me, other in (("a", "b"), ("b", "a"))]
    outputs = [process.communicate(timeout=300) for process in processes]
    assert [process.returncode for process in processes] == [0, 0], [err for _, err in outputs]
    return sorted(out.strip() for out, _ in outputs), (folder / "builds").read_text().split()


def test_two_processes_wanting_the_same_images_build_them_once(tmp_path):
    printed, builds = build_in_two_processes(tmp_path, "lock")
    assert len(builds) == 1
    assert printed == ["hit 224 2", "miss 224 2"]  # the waiter reads what the builder stored


def test_without_the_lock_both_processes_would_build(tmp_path):
    """The control: the race above is real, so the lock is what makes the builds one."""
    printed, builds = build_in_two_processes(tmp_path, "nolock")
    assert sorted(builds) == ["a", "b"] and printed == ["miss 224 2", "miss 224 2"]


def test_two_threads_wanting_the_same_images_build_them_once(tmp_path):
    builds, results, both = [], [], threading.Barrier(2)

    def build():
        builds.append(threading.get_ident())
        time.sleep(0.5)  # the other thread asks meanwhile
        return np.full((2, 4, 4, 1), 7, np.uint8), {"n": 2}

    def want():
        both.wait()
        images, meta, state = cache.load_or_build(tmp_path / "cache", "key", build)
        results.append((state, int(images.sum()), meta))

    threads = [threading.Thread(target=want) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(builds) == 1
    assert sorted(results, key=lambda r: r[0]) == [("hit", 224, {"n": 2}), ("miss", 224, {"n": 2})]

