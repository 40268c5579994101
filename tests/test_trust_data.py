"""Data a user hands us is not trusted: a failure with loader workers alive ends the run (no hang, no
orphans), images are capped in pixels from their header before decoding, image paths stay inside
the image folder."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_bad_input import fake_weights, names_of

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


# ---------------------------------------------------------------- a failure with workers alive ends the run
# Loaded at interpreter start (sitecustomize) of the tool under test: raises at the chosen point and
# records which process raised, its loader workers and when.
INJECT = r"""
import json, multiprocessing, os, time

def _fail(where):
    record = {"pid": os.getpid(), "workers": [p.pid for p in multiprocessing.active_children()], "time": time.time()}
    with open(os.environ["INJECT_LOG"], "w") as log:
        json.dump(record, log)
    raise RuntimeError(f"injected failure at {where}")

def _on_call(n, original, where):
    calls = [0]
    def wrapped(*args, **kwargs):
        calls[0] += 1
        if calls[0] == n:
            _fail(where)
        return original(*args, **kwargs)
    return wrapped

point = os.environ.get("INJECT")
if point == "load":  # decoding the 3rd image, inside a loader worker
    import ssdfast.data.coco as coco
    coco.read_image = _on_call(3, coco.read_image, point)
elif point == "step":  # the 2nd training step (train.py) or evaluated batch (eval.py), in the main process
    import ssdfast.engine as engine
    import ssdfast.train_step as train_step
    train_step.TrainStep.__call__ = _on_call(2, train_step.TrainStep.__call__, point)
    engine.detections_to_coco = _on_call(2, engine.detections_to_coco, point)
elif point == "evaluation":  # COCO evaluation, after the loaders' passes (their persistent workers idle)
    import ssdfast.engine as engine
    engine.coco_evaluate = _on_call(1, engine.coco_evaluate, point)
"""


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group `pgid`."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def run_injected(tmp_path, point: str, cmd: list, timeout: float = 120):
    """Run `cmd` in its own process group with a failure injected at `point` -> (exit code, output,
    the injection record, seconds from the failure to the exit). A run still going after `timeout`
    (the hang) is killed with its whole group and fails the test."""
    shim = tmp_path / "shim"
    shim.mkdir(exist_ok=True)
    (shim / "sitecustomize.py").write_text(INJECT)
    log = tmp_path / f"inject_{point}.json"
    env = {**os.environ, "INJECT": point, "INJECT_LOG": str(log),
           "PYTHONPATH": os.pathsep.join([str(shim), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen([sys.executable, *map(str, cmd)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"{point}: still running {timeout} s after the start (hung):\n{output[-3000:]}")
    ended = time.time()
    assert log.exists(), f"{point}: the injected failure was never reached:\n{output[-3000:]}"
    record = json.loads(log.read_text())
    deadline = time.time() + 5  # killed workers may take a moment to leave the process table
    while group_members(process.pid) and time.time() < deadline:
        time.sleep(0.1)
    assert not group_members(process.pid), f"{point}: processes left behind: {group_members(process.pid)}"
    return process.returncode, output, record, ended - record["time"]


@pytest.mark.parametrize("point", ["load", "step", "evaluation"])
def test_a_training_failure_with_workers_ends_within_seconds(point, synthetic_coco, tmp_path):
    cmd = [ROOT / "tools" / "train.py", "--data-path", synthetic_coco, "--save-folder", tmp_path / "run",
           "--model", "ssdlite", "--backbone-weights", "none", "--epochs", 1, "--batch-size", 2,
           "--num-workers", 2, "--iters-per-epoch", 2, "--eval-batches", 1, "--log-every", 1]
    code, output, record, took = run_injected(tmp_path, point, cmd)
    assert code == 1 and f"RuntimeError: injected failure at {point}" in output, output[-3000:]
    assert took < 30, f"{point}: {took:.1f} s from the failure to the exit"
    if point == "load":  # raised in a worker, reported by the main process
        assert record["workers"] == []
    else:
        assert len(record["workers"]) >= 2, record  # the loader workers were alive at the failure


@pytest.mark.parametrize("point", ["load", "step", "evaluation"])
def test_an_evaluation_failure_with_workers_ends_within_seconds(point, synthetic_coco, tmp_path):
    weights = fake_weights(tmp_path / "w.pt", names_of(synthetic_coco))
    cmd = [ROOT / "tools" / "eval.py", "--data-path", synthetic_coco, "--weights", weights, "--batch-size", 2,
           "--num-workers", 2, "--output", tmp_path / "out" / "detections.json"]
    code, output, record, took = run_injected(tmp_path, point, cmd)
    assert code == 1 and f"RuntimeError: injected failure at {point}" in output, output[-3000:]
    assert took < 30, f"{point}: {took:.1f} s from the failure to the exit"
    assert (record["workers"] == []) if point == "load" else len(record["workers"]) >= 2, record
