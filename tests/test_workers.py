"""The worker processes of a stage end within seconds of the stage's own process, even one killed with SIGKILL.

Each case runs a pool in a process of its own whose tasks sleep for a minute, kills that process
with SIGKILL once its workers are there, and looks for the workers a few seconds later.
"""

import signal
import subprocess
import sys
import time

import psutil
import pytest

from retinaseg.fetch.synthetic.generator import generate

#: How long a task sleeps: far longer than the test waits, so a worker still there is one left behind.
TASK_SECONDS = 60
#: How long the workers may take to end once their parent is gone.
GRACE_SECONDS = 5

POOL = f"""
import time
from retinaseg.core.workers import worker_pool
with worker_pool(2) as pool:
    list(pool.map(time.sleep, [{TASK_SECONDS}] * 2))
"""

# Each image takes a minute to draw: a style that only sleeps (the forked workers see it in STYLES).
GENERATOR = f"""
import sys, time
from retinaseg.fetch.synthetic import generator
generator.STYLES["sleeping"] = lambda canvas, rng: time.sleep({TASK_SECONDS})
generator.generate(sys.argv[1], num_images=2, size=(64, 48), style="sleeping", workers=2)
"""

# Each image takes a minute to load (prepare_dataset looks load_sample up when it runs).
PREPARE = f"""
import sys, time
from pathlib import Path
from retinaseg.core.params import PrepareParams
from retinaseg.core.tasks import Task
from retinaseg.prepare import sets
def load_sample(image_id, **settings):
    time.sleep({TASK_SECONDS})
sets.load_sample = load_sample
params = PrepareParams(threshold=0.1, core_threshold=0.75, image_size=16, crop_to_fundus=True, train_ids="1-2")
sets.prepare_dataset(Path(sys.argv[1]) / "raw", Path(sys.argv[1]) / "prepared",
                     tasks=[Task("binary", {{"hemorrhages": ("hemorrhages",)}})], params=params, workers=2)
"""


def wait_for_children(process: subprocess.Popen, count: int, seconds: float = 30) -> list[psutil.Process]:
    """The child processes of ``process`` once there are ``count`` of them."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        children = psutil.Process(process.pid).children()
        if len(children) >= count:
            return children
        if process.poll() is not None:
            pytest.fail(f"the pool's process ended ({process.returncode}) before its workers started: "
                        f"{process.communicate()[1]}")
        time.sleep(0.05)
    pytest.fail(f"no {count} workers after {seconds} s")


def alive(worker: psutil.Process) -> bool:
    """Still running: a zombie (ended, not yet reaped by the process that adopted it) counts as ended."""
    try:
        return worker.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.parametrize("script", [POOL, GENERATOR, PREPARE], ids=["worker_pool", "generate", "prepare_dataset"])
def test_workers_end_when_their_parent_is_killed(script, tmp_path):
    if script is PREPARE:
        generate(tmp_path / "raw", num_images=3, size=(64, 48), seed=0, style="easy", workers=1)
    parent = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    workers = []
    try:
        workers = wait_for_children(parent, 2)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + GRACE_SECONDS
        while any(map(alive, workers)) and time.monotonic() < deadline:
            time.sleep(0.05)
        left = [worker.pid for worker in workers if alive(worker)]
        assert not left, f"workers {left} outlived their parent by {GRACE_SECONDS} s"
    finally:
        for process in [parent, *workers]:
            try:
                process.kill()
            except (ProcessLookupError, psutil.NoSuchProcess):
                pass
        parent.wait()
