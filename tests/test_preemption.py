"""Preemption: kills at random moments, signals, torchrun restarts and two-node rendezvous, full and
read-only disks, hung ranks. The oracle is always an uninterrupted run of the same command: a resumed
run must end with its weights (tools/train.py replays data order and augmentation from the seed)."""

import importlib.util
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import RESUMED_EPOCHS as EPOCHS
from conftest import ROOT, TOOL_SERVER, free_port, resume_args, shared_once

from ssdfast.machinery.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

pytestmark = pytest.mark.slow
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]


def train_cmd(data, folder, *extra, epochs=EPOCHS, batch_size=4):
    """conftest's straight_run command (the oracle), with more flags."""
    return [
        str(ROOT / "tools" / "train.py"),
        *map(str, resume_args(data, folder, "--batch-size", batch_size, *extra, epochs=epochs)),
    ]


def forkable(prefix, env) -> bool:
    """A plain `python script` run the tool server can fork: no launcher prefix, and no PYTHONPATH in `env`
    (a sitecustomize shim must be imported at interpreter start)."""
    return tuple(prefix) == (sys.executable,) and "PYTHONPATH" not in (env or {}) and TOOL_SERVER.usable()


def run(cmd, prefix=(sys.executable,), env=None, check=True):
    """`python cmd...` (or `prefix cmd...`) to its end. Plain Python runs are forked from conftest's tool
    server, unless `env` sets PYTHONPATH (a sitecustomize shim must be imported at interpreter start)."""
    environment = {**os.environ, **(env or {})}
    if forkable(prefix, env):
        result = TOOL_SERVER.run(list(map(str, cmd)), environment, timeout=900)
    else:
        result = subprocess.run([*prefix, *cmd], cwd=ROOT, capture_output=True, text=True, timeout=900, env=environment)
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


class Started(subprocess.Popen):
    """A run in the background, its stdout and stderr going to a file (a pipe nobody reads would fill up)."""

    def __init__(self, cmd, prefix=(sys.executable,), env=None, session=False):
        self.log = Path(os.environ.get("TMPDIR", "/tmp")) / f"ssdfast_run_{time.time_ns()}.log"
        with open(self.log, "w") as out:  # session: its own process group, to signal it with its workers
            super().__init__(
                [*prefix, *cmd],
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
                env={**os.environ, **(env or {})},
                start_new_session=session,
            )

    def output(self, timeout=600) -> str:
        """Wait for the end; everything it printed."""
        self.wait(timeout=timeout)
        return self.log.read_text()


def start(cmd, prefix=(sys.executable,), env=None, session=False):
    """`python cmd...` (or `prefix cmd...`) in the background: forked from conftest's tool server where
    run() would be, else a Started subprocess. Either has pid, poll, wait, kill, send_signal, log, output."""
    if forkable(prefix, env):
        log = Path(os.environ.get("TMPDIR", "/tmp")) / f"ssdfast_run_{time.time_ns()}.log"
        return TOOL_SERVER.start(list(map(str, cmd)), {**os.environ, **(env or {})}, log, session=session)
    return Started(cmd, prefix, env, session)


def wait_for(condition, process, what, timeout=600):
    deadline = time.time() + timeout
    while not condition():
        assert process.poll() is None, f"the run ended before {what}:\n{process.log.read_text()[-3000:]}"
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def position(folder):
    """The (epoch, iteration) last.pt holds, or None if there is none yet (read while a run writes it:
    the atomic rename means a file that exists is complete)."""
    try:
        ckpt = load_checkpoint(folder / "last.pt")
    except CheckpointError:
        return None
    pos = ckpt.get("position")
    return (pos["epoch"], pos["iteration"]) if pos else (ckpt["epoch"] + 1, 0)


def assert_same_weights(a_folder, b_folder):
    a, b = load_checkpoint(a_folder / "last.pt")["model"], load_checkpoint(b_folder / "last.pt")["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)


def epoch_losses(folder):
    records = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
    return {r["epoch"]: r["loss"] for r in records if "iteration" not in r}


def ranks_of(launcher) -> dict[int, int]:
    """{local rank: pid} of a torchrun launcher's workers (from their environment, not the listing order)."""
    out = {}
    for pid in Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read_text().split():
        env = dict(item.split("=", 1) for item in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in item)
        out[int(env["LOCAL_RANK"])] = int(pid)
    return out


def iterations_logged(folder) -> int:
    log = folder / "log.jsonl"
    return log.read_text().count('"iteration"') if log.exists() else 0


@pytest.fixture
def straight(straight_run):
    """The uninterrupted single-process run (conftest's straight_run; also keeps one epoch checkpoint)."""
    return straight_run


@pytest.fixture(scope="session")
def straight_ddp(synthetic_coco, tmp_path_factory):
    """The uninterrupted 2-process run (torchrun, gloo)."""
    return shared_once(
        tmp_path_factory,
        "straight_ddp",
        lambda folder: run(
            train_cmd(synthetic_coco, folder, batch_size=2),
            prefix=[*TORCHRUN, "--nproc_per_node=2", f"--master_port={free_port()}"],
        ),
    )


KILL_IN_REPLACE = """
import os, signal
_count, _replace = 0, os.replace
def replace(src, dst, *args, **kwargs):  # SIGKILL this process in the middle of a checkpoint write
    global _count
    if str(dst).endswith("last.pt"):
        _count += 1
        if _count == int(os.environ["KILL_AT_SAVE"]):
            os.kill(os.getpid(), signal.SIGKILL)
    return _replace(src, dst, *args, **kwargs)
os.replace = replace
"""


def test_sigkill_at_three_moments_resumes_to_the_uninterrupted_weights(straight, synthetic_coco, tmp_path, test_seed):
    """kill -9 mid-epoch 0 at a random moment, then inside a checkpoint write (after the data is written,
    before the rename), then at a random moment of epoch 1: the run ends with the uninterrupted weights."""
    seed = test_seed
    rng = random.Random(seed)
    folder = tmp_path / "killed"
    cmd = train_cmd(synthetic_coco, folder, "--checkpoint-every", 1, "--log-every", 1)

    process = start(cmd)  # 1: mid-epoch 0, after a random iteration (6 per epoch), at a random instant of the next
    after = rng.randint(1, 4)
    wait_for(lambda: iterations_logged(folder) >= after, process, f"iteration {after}")
    time.sleep(rng.uniform(0, 0.2))
    process.kill()
    process.wait()
    first = position(folder)  # None: killed before the first checkpoint was in place, the rerun starts afresh
    assert first is None or first[0] == 0, f"seed {seed}: killed too late ({first})"

    shim = tmp_path / "shim"  # 2: inside the k-th checkpoint write of the restarted run
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(KILL_IN_REPLACE)
    kill_at = rng.randint(1, 3)
    env = {"PYTHONPATH": f"{shim}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "KILL_AT_SAVE": str(kill_at)}
    result = run(cmd, env=env, check=False)
    assert result.returncode == -signal.SIGKILL, f"seed {seed}: {result.stdout[-2000:]}{result.stderr[-2000:]}"
    if first is None:  # nothing to resume from: a fresh start
        assert "resuming from" not in result.stdout, f"seed {seed}: {result.stdout[-2000:]}"
    else:
        assert f"continuing with iteration {first[1]} (0-based)" in result.stdout, (
            f"seed {seed}: {result.stdout[-2000:]}"
        )
    assert list(folder.glob(".last.pt.*.tmp")), f"seed {seed}: the kill did not land inside a write"
    second = position(folder) or (0, 0)
    assert second >= (first or (0, 0)), f"seed {seed}"  # the killed write left last.pt as it was

    logged = (folder / "log.jsonl").read_text()  # the killed runs' lines: run 2 may have logged epoch 1 already
    process = start(cmd)  # 3: a random moment of epoch 1
    after = rng.randint(1, 4)
    wait_for(
        lambda: f'"epoch": 1, "iteration": {after - 1}' in (folder / "log.jsonl").read_text()[len(logged) :],
        process,
        f"epoch 1 iteration {after - 1}",
    )
    time.sleep(rng.uniform(0, 0.2))
    process.kill()
    output = process.output()
    assert "removed .last.pt." in output, f"seed {seed}: {output[-2000:]}"  # the torn write's temporary file
    assert position(folder) < (EPOCHS, 0), f"seed {seed}: the run finished before the kill"

    resumed = run(cmd)
    assert "resuming from" in resumed.stdout and "done: checkpoints" in resumed.stdout, f"seed {seed}"
    assert not list(folder.glob(".*.tmp")), f"seed {seed}"
    assert_same_weights(straight, folder)
    # The epoch means survive the restarts: the same per-epoch loss as the uninterrupted run.
    straight_losses, losses = epoch_losses(straight), epoch_losses(folder)
    assert sorted(losses) == [0, 1]
    for epoch, loss in straight_losses.items():
        assert abs(loss - losses[epoch]) < 1e-4 * abs(loss), (seed, epoch)


def test_keep_checkpoints_keeps_the_newest_epochs(straight):
    kept = sorted(p.name for p in straight.glob("epoch_*.pt"))
    assert kept == [f"epoch_{EPOCHS - 1:03d}.pt"]
    assert (straight / kept[0]).read_bytes() == (straight / "last.pt").read_bytes()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGUSR1], ids=lambda s: s.name)
def test_a_signal_saves_mid_epoch_and_the_rerun_continues(sig, straight, synthetic_coco, tmp_path):
    """With loader workers, signalled as a cluster does it: the whole process group (workers included)."""
    folder = tmp_path / "signalled"
    cmd = train_cmd(synthetic_coco, folder, "--checkpoint-every", 0, "--log-every", 1, "--num-workers", 2)
    process = start(cmd, session=True)
    log = folder / "log.jsonl"
    wait_for(lambda: log.exists() and log.read_text().count("iteration") >= 2, process, "two iterations")
    sent = time.time()
    os.killpg(process.pid, sig)
    output = process.output(timeout=120)
    took = time.time() - sent
    assert process.returncode == 75, output[-2000:]
    assert f"stopped ({sig.name}) at epoch 0, iteration" in output
    epoch, iteration = position(folder)
    assert epoch == 0 and 2 <= iteration < 6, (epoch, iteration)  # mid-epoch: 6 iterations per epoch
    steps = [r for r in map(json.loads, log.read_text().splitlines()) if "iteration" in r]
    assert took < 60, f"took {took:.1f} s to stop"
    resumed = run(cmd)
    assert f"continuing with iteration {iteration}" in resumed.stdout
    assert_same_weights(straight, folder)
    assert len(steps) >= 2


@pytest.mark.skipif(importlib.util.find_spec("nvidia.dali") is None, reason="DALI not installed")
def test_a_dali_run_stopped_by_a_signal_ends_and_its_rerun_continues(synthetic_coco, tmp_path):
    """--dali with loader workers, SIGTERM to the process group mid-epoch: the run ends with 75 (DALI's exit
    hook once collected the loader's iterator before ours ended the workers, and the exit hung joining them),
    and the rerun continues after the last trained batch to the end."""
    folder = tmp_path / "dali"
    cmd = train_cmd(synthetic_coco, folder, "--checkpoint-every", 0, "--log-every", 1, "--num-workers", 2, "--dali")
    process = start(cmd, session=True)
    log = folder / "log.jsonl"
    wait_for(lambda: log.exists() and log.read_text().count("iteration") >= 2, process, "two iterations")
    sent = time.time()
    os.killpg(process.pid, signal.SIGTERM)
    output = process.output(timeout=120)
    took = time.time() - sent
    # Measured on a 2-core CPU: 2.5 s to stop; 23 s while the exit joined the workers from DALI's hook.
    assert process.returncode == 75 and took < 15, f"{took:.1f} s: {output[-2000:]}"
    epoch, iteration = position(folder)
    resumed = run(cmd)
    assert f"continuing with iteration {iteration}" in resumed.stdout and "done: checkpoints" in resumed.stdout
    assert load_checkpoint(folder / "last.pt")["epoch"] == EPOCHS - 1


def test_a_second_ctrl_c_aborts_at_once_and_keeps_the_previous_checkpoint(straight, synthetic_coco, tmp_path):
    folder = tmp_path / "aborted"
    folder.mkdir()
    (folder / "last.pt").write_bytes((straight / "last.pt").read_bytes())  # epoch 1 done: continues at epoch 2
    before = (folder / "last.pt").read_bytes()
    process = start(train_cmd(synthetic_coco, folder, "--checkpoint-every", 0, "--log-every", 1, epochs=3))
    log = folder / "log.jsonl"
    wait_for(lambda: log.exists() and '"epoch": 2, "iteration"' in log.read_text(), process, "epoch 2")
    process.send_signal(signal.SIGINT)
    wait_for(lambda: "SIGINT received" in process.log.read_text(), process, "the first Ctrl-C's note")
    process.send_signal(signal.SIGINT)
    output = process.output(timeout=120)
    assert process.returncode == -signal.SIGINT, output[-2000:]  # killed by it at once (a shell shows 130)
    assert (folder / "last.pt").read_bytes() == before


def test_torchrun_restarts_after_a_rank_is_killed(straight_ddp, synthetic_coco, tmp_path):
    folder = tmp_path / "elastic"
    cmd = train_cmd(synthetic_coco, folder, "--checkpoint-every", 1, "--dist-timeout", 60, batch_size=2)
    launcher = start(cmd, prefix=[*TORCHRUN, "--nproc_per_node=2", "--max-restarts=1", f"--master_port={free_port()}"])
    wait_for(lambda: position(folder) is not None and position(folder)[1] >= 2, launcher, "a mid-epoch checkpoint")
    ranks = ranks_of(launcher)
    assert sorted(ranks) == [0, 1], ranks
    os.kill(ranks[1], signal.SIGKILL)
    output = launcher.output()
    assert launcher.returncode == 0, output[-3000:]
    assert "continuing with iteration" in output  # the restarted group resumed mid-epoch, by itself
    assert_same_weights(straight_ddp, folder)


def test_a_signal_to_one_rank_stops_every_rank_at_the_same_step(straight_ddp, synthetic_coco, tmp_path):
    """SIGTERM to rank 1 only: through the per-step agreement both ranks stop after the same step, rank 0
    saves, both exit 75 (none left waiting in an all-reduce); the rerun resumes there."""
    folder = tmp_path / "ddp_signal"
    cmd = train_cmd(
        synthetic_coco, folder, "--checkpoint-every", 0, "--log-every", 1, "--dist-timeout", 60, batch_size=2
    )
    prefix = [*TORCHRUN, "--nproc_per_node=2", "--max-restarts=0", f"--master_port={free_port()}"]
    launcher = start(cmd, prefix=prefix)
    log = folder / "log.jsonl"
    wait_for(lambda: log.exists() and log.read_text().count("iteration") >= 2, launcher, "two iterations")
    os.kill(ranks_of(launcher)[1], signal.SIGTERM)
    output = launcher.output(timeout=300)
    assert "stopped (another rank was signalled) at epoch 0, iteration" in output, output[-3000:]
    assert len(re.findall(r"exitcode\s+:\s*75 \(pid", output)) == 2, output[-3000:]  # torchrun's report: both ranks
    epoch, iteration = position(folder)
    assert epoch == 0 and 2 <= iteration < 6
    resumed = run(cmd, prefix=[*TORCHRUN, "--nproc_per_node=2", f"--master_port={free_port()}"])
    assert f"continuing with iteration {iteration}" in resumed.stdout
    assert_same_weights(straight_ddp, folder)


def test_two_launchers_as_two_nodes_train_and_resume(straight_ddp, synthetic_coco, tmp_path):
    """Two torchrun launchers on this machine, one process each, c10d rendezvous on 127.0.0.1: one epoch,
    then the same two commands with two epochs resume and end at the 2-process single-launcher weights."""
    folder = tmp_path / "two_nodes"
    endpoint = f"127.0.0.1:{free_port()}"
    for epochs in (1, EPOCHS):
        prefix = [
            *TORCHRUN,
            "--nnodes=2",
            "--nproc_per_node=1",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={endpoint}",
            f"--rdzv-id=nodes{epochs}",
        ]
        # OMP_NUM_THREADS=1 as torchrun sets it for the 2-process run (with one process per launcher it
        # does not): another thread count changes the float summation order, and so the weights.
        nodes = [
            start(
                train_cmd(synthetic_coco, folder, "--dist-timeout", 60, epochs=epochs, batch_size=2),
                prefix=prefix,
                env={"OMP_NUM_THREADS": "1"},
            )
            for _ in range(2)
        ]
        outputs = [node.output() for node in nodes]
        assert [node.returncode for node in nodes] == [0, 0], "\n".join(o[-2000:] for o in outputs)
    assert "epoch 0 done, continuing at epoch 1" in "".join(outputs)
    assert_same_weights(straight_ddp, folder)


def test_a_hung_rank_ends_the_job_within_the_timeout(synthetic_coco, tmp_path):
    """A rank that stops answering (SIGSTOP) without dying: the other one fails its collective after
    --dist-timeout and says so (exit 3) instead of waiting forever."""
    folder = tmp_path / "hung"
    cmd = train_cmd(
        synthetic_coco, folder, "--checkpoint-every", 0, "--log-every", 1, "--dist-timeout", 10, batch_size=2
    )
    launcher = start(cmd, prefix=[*TORCHRUN, "--nproc_per_node=2", "--max-restarts=0", f"--master_port={free_port()}"])
    log = folder / "log.jsonl"
    wait_for(lambda: log.exists() and log.read_text().count("iteration") >= 1, launcher, "one iteration")
    ranks = ranks_of(launcher)
    os.kill(ranks[1], signal.SIGSTOP)
    stopped_at = time.time()
    try:
        # Once rank 0 has ended, torchrun stops the job: SIGTERM to every rank, and SIGKILL 30 s later to one
        # that is stopped (a stopped process does not take SIGTERM). The test sends that SIGKILL itself once
        # torchrun has reaped rank 0 (its /proc entry gone), so rank 0 stays the first failure torchrun saw.
        wait_for(lambda: not Path(f"/proc/{ranks[0]}").exists(), launcher, "the end of rank 0", timeout=120)
        os.kill(ranks[1], signal.SIGKILL)
        output = launcher.output(timeout=180)
    finally:
        for pid in ranks.values():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        launcher.kill()
    assert time.time() - stopped_at < 120
    assert "error: rank 0: a collective operation failed" in output, output[-3000:]
    assert re.search(r"exitcode\s*:\s*3\b", output), output[-3000:]


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A tmpfs mount the test can fill (needs root, as in CI and on the development machines)."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()

    def make(size: int, read_only=False):
        options = f"size={size}" + (",ro" if read_only else "")
        if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)], capture_output=True).returncode:
            pytest.skip("cannot mount a tmpfs here (needs root)")
        return mount

    yield make
    subprocess.run(["umount", str(mount)], capture_output=True)


def test_a_full_disk_stops_with_a_named_error_and_keeps_the_checkpoint(straight, synthetic_coco, tiny_tmpfs):
    size = (straight / "last.pt").stat().st_size
    folder = tiny_tmpfs(size + size // 2)  # holds last.pt, not a second copy beside it
    (folder / "last.pt").write_bytes((straight / "last.pt").read_bytes())
    before = (folder / "last.pt").read_bytes()
    result = run(train_cmd(synthetic_coco, folder, "--checkpoint-every", 1, epochs=3), check=False)
    assert result.returncode == 1, result.stderr[-2000:]
    assert f"error: cannot write checkpoint last.pt to {folder}: no space left (" in result.stderr
    assert "MiB needed" in result.stderr and "the previous one is intact" in result.stderr
    assert (folder / "last.pt").read_bytes() == before
    assert not list(folder.glob(".*.tmp"))


def test_save_checkpoint_errors_name_the_folder(tiny_tmpfs, monkeypatch, tmp_path):
    folder = tiny_tmpfs(2 * 2**20)
    save_checkpoint(folder / "a.pt", {"small": torch.zeros(10)})
    before = (folder / "a.pt").read_bytes()
    # The write itself fails (the free-space check is fooled): still the named error, nothing left behind.
    monkeypatch.setattr("shutil.disk_usage", lambda path: type("Usage", (), {"free": 2**40})())
    with pytest.raises(
        CheckpointError, match=f"cannot write checkpoint a.pt to {folder}: .*the previous one is intact"
    ):
        save_checkpoint(folder / "a.pt", {"big": torch.zeros(1_000_000)})
    assert (folder / "a.pt").read_bytes() == before and not list(folder.glob(".*.tmp"))
    monkeypatch.undo()
    subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
    with pytest.raises(CheckpointError, match=f"cannot write checkpoint a.pt to {folder}: Read-only file system"):
        save_checkpoint(folder / "a.pt", {"small": torch.zeros(20)})
    assert (folder / "a.pt").read_bytes() == before
