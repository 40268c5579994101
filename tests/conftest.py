"""Shared fixtures and helpers. New tests: reuse these instead of training or writing your own.

Fixtures
  synthetic_coco   session: a small COCO-layout set (24 train, 8 val images, 3 classes), written once.
  trained_run      session: (folder, CompletedProcess) of tools/train.py, SSDLite, 2 epochs on
                   synthetic_coco with evaluation: last.pt, best.pt, log.jsonl, tensorboard/.
  straight_run     session: the folder of the uninterrupted run that interrupted runs are compared with:
                   tools/train.py with resume_args(...) (2 epochs, --seed 5, no evaluation) and
                   --keep-checkpoints 1. Same flags + a kill/signal + a rerun must end at its weights.
  ddp_run          session: the folder of tools/train.py under torchrun (2 CPU processes, 3 iterations).
                   Both are read-only: copy a file out before changing it (other tests read the folder).
  test_seed        the seed of a randomised test: $SSDFAST_TEST_SEED, or one from the clock; a failing
                   test's report says it ("rerun with SSDFAST_TEST_SEED=..."). SSDFAST_TEST_SEEDS=0-19
                   runs each such test once per seed.
Helpers (`from conftest import ...`)
  tool(name, *args, check=True, prefix=(), env=None)
                                              runs tools/<name>.py in its own process (env: variables to
                                              add), forked from one with PyTorch imported (tool_server.py);
                                              train_args(...), resume_args(...): tools/train.py's flags for
                                              the runs above (a flag given again in *extra wins: argparse)
  shared_once(tmp_path_factory, name, build)  a folder built once for the whole run, xdist workers included
  free_port(), torchrun(processes=2)          a free TCP port for torchrun's --master_port; torchrun's prefix
  CUDA, DEVICES, random_boxes, grid_boxes

Parallel runs (`make test` runs pytest-xdist, `-n 2`): each worker and each process a test starts
computes with one thread, so two workers share 2 cores without oversubscription; session fixtures
that take more than a few seconds go through shared_once, so the workers build them once between them.
"""

import atexit
import fcntl
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pytest
import torch

from ssdfast.data.synthetic import write_synthetic_coco

ROOT = Path(__file__).resolve().parent.parent
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
DEVICES = ["cpu", pytest.param("cuda", marks=[CUDA, pytest.mark.cuda])]

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two workers on two cores: one thread each, for this process and every process it starts (tools,
    # torchrun). Intra-op threads spinning against the other worker's cost more than they gain.
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


def random_boxes(n: int, generator: torch.Generator | None = None, max_size: float = 0.5, device="cpu") -> torch.Tensor:
    """n valid xyxy boxes inside [0, 1] (float32)."""
    xy = torch.rand(n, 2, generator=generator) * (1 - max_size)
    wh = torch.rand(n, 2, generator=generator) * max_size + 1e-3
    return torch.cat([xy, xy + wh], dim=1).to(device)


def grid_boxes(n: int, generator: torch.Generator, cells: int = 4, device="cpu") -> torch.Tensor:
    """n boxes with coordinates on a coarse grid: many identical boxes and exact IoU ties."""
    a = torch.randint(0, cells, (n, 2), generator=generator)
    b = a + torch.randint(1, cells + 1, (n, 2), generator=generator)
    return (torch.cat([a, b], dim=1).float() / (2 * cells)).to(device)


def tool(name, *args, check=True, prefix=(), env=None):
    """tools/<name>.py run as a user runs it (its own process): the CompletedProcess, text output.
    env: environment variables to set for it, on top of this process's. Without a prefix (torchrun), the
    process is forked from one that has PyTorch imported already (tests/tool_server.py)."""
    cmd = [*(prefix or [sys.executable]), str(ROOT / "tools" / f"{name}.py"), *map(str, args)]
    environment = {**os.environ, **(env or {})}
    if prefix or not TOOL_SERVER.usable():
        result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, env=environment)
    else:
        result = TOOL_SERVER.run(cmd[1:], environment, timeout=900)
    if check and result.returncode != 0:
        raise AssertionError(f"{name} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


class ForkedRun:
    """A run forked by the ToolServer, going on in the background: the part of subprocess.Popen the tests
    use (pid, poll, wait, send_signal, kill, returncode), plus `log` (its output file, stdout and stderr
    merged unless the request split them) and output(). The server answers nothing else meanwhile."""

    def __init__(self, server: "ToolServer", argv: list[str], pid: int, log: Path):
        self.server, self.args, self.pid, self.log, self.returncode = server, argv, pid, log, None

    def poll(self) -> int | None:
        return self.wait(timeout=0, expire=False)

    def wait(self, timeout: float | None = None, expire: bool = True) -> int | None:
        if self.returncode is None:
            ready, _, _ = select.select([self.server.process.stdout], [], [], timeout)
            if not ready:
                if expire:
                    raise subprocess.TimeoutExpired(self.args, timeout)
                return None
            self.returncode = json.loads(self.server.process.stdout.readline())["returncode"]
            self.server.in_flight = None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:  # not yet reaped by the server: the pid is still this run's
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def output(self, timeout: float = 600) -> str:
        """Wait for the end; everything it printed."""
        self.wait(timeout)
        return self.log.read_text()


class ToolServer:
    """This process's tests/tool_server.py, started at the first run (SSDFAST_TEST_FORK=0: plain subprocesses)."""

    def __init__(self):
        self.process = None
        self.in_flight = None  # the ForkedRun the server waits for, if any
        self.refused = os.environ.get("SSDFAST_TEST_FORK") == "0"

    def usable(self) -> bool:
        """True when the server can fork a run now (not while a background run of it goes on)."""
        if self.refused or (self.in_flight is not None and self.in_flight.poll() is None):
            return False
        if self.process is None or self.process.poll() is not None:
            self.process = subprocess.Popen(
                [sys.executable, str(ROOT / "tests" / "tool_server.py")],
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                bufsize=1,
            )
            reply = json.loads(self.process.stdout.readline() or '{"refused": "it exited"}')
            if "refused" in reply:
                warnings.warn(
                    f"tests/tool_server.py refused ({reply['refused']}): tools run as plain subprocesses", stacklevel=2
                )
                self.refused = True
                return False
        return True

    def start(self, argv: list[str], env: dict, log: Path, stderr: Path | None = None, session=False) -> ForkedRun:
        """`python argv...` forked in the background, its stdout to `log` (stderr too, unless `stderr`);
        session: in its own session and process group (os.killpg(run.pid, ...) reaches it and its workers)."""
        request = {"argv": argv, "cwd": str(ROOT), "env": env, "stdout": str(log), "stderr": str(stderr or log)}
        self.process.stdin.write(json.dumps({**request, "session": session}) + "\n")
        self.in_flight = ForkedRun(self, argv, json.loads(self.process.stdout.readline())["pid"], log)
        return self.in_flight

    def run(self, argv: list[str], env: dict, timeout: float) -> subprocess.CompletedProcess:
        with tempfile.TemporaryDirectory() as folder:
            out, err = Path(folder) / "stdout", Path(folder) / "stderr"
            forked = self.start(argv, env, out, err)
            try:
                code = forked.wait(timeout)
            except subprocess.TimeoutExpired:
                forked.kill()
                forked.wait()
                raise
            read = lambda path: path.read_bytes().decode("utf-8", errors="replace")  # noqa: E731
            return subprocess.CompletedProcess([sys.executable, *argv], code, read(out), read(err))

    def close(self):
        if self.process is not None and self.process.poll() is None:
            self.process.stdin.close()
            self.process.wait(timeout=60)


TOOL_SERVER = ToolServer()
atexit.register(TOOL_SERVER.close)


def train_args(data, folder, epochs, *extra):
    """tools/train.py's arguments for a small CPU run: SSDLite from scratch, batch 4, no loader workers."""
    return [
        "--data-path",
        data,
        "--save-folder",
        folder,
        "--model",
        "ssdlite",
        "--backbone-weights",
        "none",
        "--epochs",
        epochs,
        "--batch-size",
        4,
        "--num-workers",
        0,
        "--lr",
        0.05,
        "--log-every",
        2,
        *extra,
    ]


def free_port() -> int:
    """A TCP port nobody listens on now (for torchrun: a fixed one clashes with another run's)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


RESUMED_EPOCHS = 2  # epochs of straight_run and of the runs that are interrupted and resumed


def resume_args(data, folder, *extra, epochs=RESUMED_EPOCHS):
    """train_args of straight_run and of the runs compared with it: no evaluation, a fixed seed."""
    return train_args(data, folder, epochs, "--eval-every", 0, "--seed", 5, *extra)


def shared_once(tmp_path_factory, name: str, build):
    """The folder `name`, filled by build(folder) once for the whole run: under pytest-xdist the first
    worker that asks builds it while the others wait for it (a file lock), then all read the same files.
    A build that fails is not cached: the next test that asks tries again (and fails the same way)."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the workers' basetemps are siblings: their parent is the run's
    folder, done = base / f"shared_{name}", base / f"shared_{name}.done"
    with open(base / f"shared_{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)  # what a failed build left
            folder.mkdir()
            build(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session")
def synthetic_coco(tmp_path_factory):
    """A small COCO-layout dataset (24 train, 8 val images) written once per session."""
    return shared_once(
        tmp_path_factory, "synthetic_coco", lambda folder: write_synthetic_coco(folder, num_train=24, num_val=8, seed=1)
    )


@pytest.fixture(scope="session")
def trained_run(synthetic_coco, tmp_path_factory):
    """tools/train.py, 2 epochs with evaluation: (folder, its CompletedProcess: stdout and stderr)."""

    def build(folder):
        result = tool("train", *train_args(synthetic_coco, folder, 2))
        (folder / "stdout.txt").write_text(result.stdout)
        (folder / "stderr.txt").write_text(result.stderr)

    folder = shared_once(tmp_path_factory, "trained_run", build)
    result = subprocess.CompletedProcess(
        [], 0, (folder / "stdout.txt").read_text(), (folder / "stderr.txt").read_text()
    )
    return folder, result


@pytest.fixture(scope="session")
def straight_run(synthetic_coco, tmp_path_factory):
    """The uninterrupted run (2 epochs, one epoch checkpoint kept): its folder."""
    return shared_once(
        tmp_path_factory,
        "straight_run",
        lambda folder: tool("train", *resume_args(synthetic_coco, folder, "--keep-checkpoints", 1)),
    )


DDP_RUN_ARGS = ("--iters-per-epoch", 3, "--eval-every", 0, "--batch-size", 2)  # ddp_run's flags beyond train_args


def torchrun(processes: int = 2) -> list[str]:
    """The prefix that runs a tool under torchrun with `processes` CPU processes (gloo), on a free port."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={processes}",
        f"--master_port={free_port()}",
    ]


@pytest.fixture(scope="session")
def ddp_run(synthetic_coco, tmp_path_factory):
    """tools/train.py under torchrun, 2 processes: 1 epoch of 3 iterations, batch 2 per rank, no
    evaluation (train_args + DDP_RUN_ARGS): its folder (last.pt)."""
    return shared_once(
        tmp_path_factory,
        "ddp_run",
        lambda folder: tool("train", *train_args(synthetic_coco, folder, 1, *DDP_RUN_ARGS), prefix=torchrun()),
    )


@pytest.fixture
def test_seed(request):
    """A randomised test's seed: $SSDFAST_TEST_SEED (to replay one), else the clock's nanoseconds."""
    seed = getattr(request, "param", None)
    if seed is None:
        seed = int(os.environ.get("SSDFAST_TEST_SEED", time.time_ns() % 2**32))
    request.node.ssdfast_seed = seed
    return seed


def seeds_to_try(spec: str) -> list[int]:
    """'0-19' -> 0, 1, ..., 19; '3,7' -> 3, 7."""
    out = []
    for part in spec.split(","):
        first, _, last = part.partition("-")
        out += range(int(first), int(last or first) + 1)
    return out


def pytest_generate_tests(metafunc):
    """SSDFAST_TEST_SEEDS=0-19: each test that takes test_seed runs once per seed (the proof that a
    randomised test holds for every seed, not only for today's)."""
    spec = os.environ.get("SSDFAST_TEST_SEEDS")
    if spec and "test_seed" in metafunc.fixturenames:
        metafunc.parametrize("test_seed", seeds_to_try(spec), indirect=True, ids=lambda seed: f"seed{seed}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Every report of a test that took a seed names it, so a failure can be replayed."""
    report = (yield).get_result()
    seed = getattr(item, "ssdfast_seed", None)
    if seed is not None:
        report.sections.append(("seed", f"seed {seed}: rerun with SSDFAST_TEST_SEED={seed}"))
