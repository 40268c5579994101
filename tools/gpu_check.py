"""Verify and measure every GPU path in one command that fits a short loan of a GPU machine (`make gpu`).

    python tools/gpu_check.py                     # every phase, in priority order, within --budget (540 s)
    python tools/gpu_check.py --budget 300        # less time: the phases at the end are skipped (and said)
    python tools/gpu_check.py --only ladder       # some phases only
    python tools/gpu_check.py --smoke             # no GPU needed: the same script, every selection checked

For a machine that already has PyTorch with CUDA and may have no network: nothing is installed, no
venv is made. Phases, most important first, each logged to --logs/<phase>.log:
  build        compile ssdfast._C in place against the installed torch, for the visible GPU (+ compiler check)
  cuda_tests   the CUDA tests (pytest -m cuda; xdist when installed)
  ladder       training-step ladder: SSD300 b128 and SSDLite b128, fp32 -> AMP -> CUDA graphs
  data_fed     GPU data path loader (4/14 workers) and SSD300 b128 fed by it or the PyTorch path vs synthetic tensors
  profile      kernel families and BatchNorm kernels of the SSD300 b128 step in fp16 and bf16 (why bf16 is slower)
  compiled     the step of --compile: fp16, bf16, bf16 reduce-overhead (Inductor cache under --logs: a rerun is warm)
  inference    end-to-end inference (post-processing included), batch 1 and 64
  ops          CUDA ops against torchvision and the pure-PyTorch twins
  sanitizers   the CUDA op tests under compute-sanitizer memcheck, racecheck, synccheck, initcheck
Python packages the tests import must be there: a missing one stops the run at once, naming it (`make gpu-wheels`
here and `make gpu` there carry and install them for a machine without network).
Each phase runs for at most its own cap and never past the budget that is left; after each phase
benchmarks/results/<gpu>.json holds everything measured so far (with the check results) and docs/speed.md's
table is regenerated, so a run that is cut off keeps what it measured. Without a GPU (and without --smoke)
it prints what it would run and exits 0. --smoke (CI) runs the same phases on CPU: every pytest
selection is collected (a typo in a -k expression selects nothing and fails here, not on a GPU) and the
error-path check runs on the CPU kernels; nothing is published.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SANITIZERS = ["memcheck", "racecheck", "synccheck", "initcheck"]
# Benchmark parts of each phase: (name, pytest -k expression). Each writes its own JSON as soon as it ends.
BENCH_PARTS = {
    "ladder": [
        ("train_ssd_b128", "test_train_step_cuda and ssd-b128 and not compiled"),
        ("train_ssdlite_b128", "test_train_step_cuda and ssdlite-b128 and not compiled"),
        ("train_ssd_b64", "test_train_step_cuda and ssd-b64 and not compiled"),
    ],
    # The step of --compile (CompiledTrainStep, inductor): fp16 with its GradScaler, bf16, bf16 reduce-overhead.
    "compiled": [
        ("train_compiled_fp16", "test_train_step_cuda and ssd-b128 and amp_fp16_channels_last_compiled"),
        (
            "train_compiled_bf16",
            "test_train_step_cuda and ssd-b128 and amp_bf16_channels_last_compiled and not reduce_overhead",
        ),
        ("train_compiled_bf16_graphs", "test_train_step_cuda and ssd-b128 and compiled_reduce_overhead"),
    ],
    # The GPU data path first (loader alone with 4 and 14 workers, then feeding SSD300 b128), then the PyTorch
    # path feeding the same step.
    "data_fed": [
        ("loader_coco_sized", "test_loader_coco_sized_cuda"),
        ("train_gpu_data", "test_train_from_gpu_loader_cuda"),
        ("train_data", "test_train_from_loader_cuda"),
    ],
    "inference": [("inference", "test_inference and cuda"), ("postprocess", "test_postprocess and cuda")],
    "ops": [("ops", "cuda and (test_match_encode or test_batched_nms or test_box_iou or test_box_decode)")],
}
# Seconds each phase may take at most (the budget cuts further). The order is the priority.
PHASE_CAPS = {
    "build": 240,
    "cuda_tests": 150,
    "ladder": 150,
    "data_fed": 150,
    "profile": 60,
    "compiled": 240,
    "inference": 60,
    "ops": 60,
    "sanitizers": 160,
}
PHASES = list(PHASE_CAPS)
MIN_PHASE_SECONDS = 20  # a phase with less time left than this is skipped, not started and cut


ERROR_PATH_CHECK = """
import sys, torch, ssdfast.ops
for device in sys.argv[1:]:
    try:
        torch.ops.ssdfast.box_decode(torch.rand(2, 11, 4, device=device), torch.rand(10, 4, device=device), 0.1, 0.2)
    except RuntimeError as error:
        assert "with A = 10" in str(error), error
        print(device, "raised a clear error:", str(error).splitlines()[0])
    else:
        raise SystemExit(f"{device}: no error for a wrong shape")
"""


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=PHASES, nargs="+", default=None, help="run these phases only (default: all)")
    p.add_argument("--logs", default="gpu_check_logs", help="folder for one log (and benchmark JSON) per phase")
    p.add_argument(
        "--budget",
        type=float,
        default=540,
        help="seconds of work in all (default 540: a 15-minute "
        "loan less the machine's start); phases that no longer fit are skipped and listed",
    )
    p.add_argument(
        "--smoke",
        action="store_true",
        help="check the script itself on CPU: collect every selection, "
        "run the error-path check on the CPU kernels, publish nothing (CI)",
    )
    args = p.parse_args(argv)
    if not args.budget > 0:
        p.error(f"--budget must be a positive number of seconds, got {args.budget}")
    return args


def run(cmd: list[str], log: Path, timeout: float, env: dict | None = None) -> tuple[int, float]:
    """Run cmd with its output in `log`; (exit code, seconds). 124 means it ran out of time."""
    start = time.time()
    with open(log, "w") as out:
        out.write("$ " + " ".join(cmd) + "\n")
        out.flush()
        try:
            code = subprocess.run(
                cmd,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=max(timeout, 1),
                env={**os.environ, **(env or {})},
            ).returncode
        except subprocess.TimeoutExpired:
            code = 124
    return code, time.time() - start


def cuda_arch() -> str:
    import torch

    major, minor = torch.cuda.get_device_capability()
    return f"{major}.{minor}"


def nvcc_major(cuda_home: str) -> int | None:
    try:
        text = subprocess.run([f"{cuda_home}/bin/nvcc", "--version"], capture_output=True, text=True).stdout
    except OSError:
        return None
    found = re.search(r"release (\d+)\.", text)
    return int(found.group(1)) if found else None


def phase_build(logs: Path, timeout: float, smoke: bool = False) -> dict:
    if smoke:  # the kernels are built already (make install): check the error path on the CPU ones
        code, secs = run([sys.executable, "-c", ERROR_PATH_CHECK, "cpu"], logs / "build_error_path.log", timeout)
        return {"ok": code == 0, "seconds": round(secs, 1)}
    import torch

    cuda_home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    nvcc, torch_cuda = nvcc_major(cuda_home), int(torch.version.cuda.split(".")[0])
    if nvcc is None:
        return {"ok": False, "error": f"no nvcc under CUDA_HOME={cuda_home}: set CUDA_HOME to the CUDA toolkit"}
    if nvcc != torch_cuda:
        return {
            "ok": False,
            "error": f"nvcc is CUDA {nvcc} but torch {torch.__version__} was built with CUDA "
            f"{torch.version.cuda}: the extension cannot link; use a toolkit of CUDA {torch_cuda}",
        }
    env = {
        "CUDA_HOME": cuda_home,
        "TORCH_CUDA_ARCH_LIST": cuda_arch(),
        "FORCE_CUDA": "1",
        "MAX_JOBS": str(os.cpu_count()),
    }
    compilers = [{}]  # the environment's compiler first (CC/CXX if set)
    if os.environ.get("CXX") and Path("/usr/bin/g++").exists() and os.environ["CXX"] != "/usr/bin/g++":
        compilers.append({"CC": "/usr/bin/gcc", "CXX": "/usr/bin/g++"})
    for attempt, compiler in enumerate(compilers):
        shutil.rmtree(ROOT / "build", ignore_errors=True)  # objects of another compiler must not be reused
        code, secs = run(
            [sys.executable, "setup.py", "build_ext", "--inplace"],
            logs / f"build{attempt or ''}.log",
            timeout,
            {**env, **compiler},
        )
        result = {
            "ok": code == 0,
            "seconds": round(secs, 1),
            "arch": env["TORCH_CUDA_ARCH_LIST"],
            "cxx": compiler.get("CXX", os.environ.get("CXX", "c++")),
        }
        if code != 0:
            return result
        # A bad-input error must reach Python as a RuntimeError on both backends. A wrapper compiler can
        # put its own copy of libstdc++'s stream code into _C.so, whose formatting of an error message then
        # crashes the process (docs/speed.md). So: check, and on a crash rebuild once with the system compiler.
        check, _ = run(
            [sys.executable, "-c", ERROR_PATH_CHECK, "cpu", "cuda"], logs / f"build{attempt or ''}_error_path.log", 120
        )
        if check == 0:
            return result
        result.update(
            ok=False,
            error="ssdfast._C crashes while raising an input error (see build_error_path.log);"
            " try another compiler, e.g. CC=/usr/bin/gcc CXX=/usr/bin/g++ make gpu",
        )
    return result


def pytest_counts(log: Path) -> dict:
    """passed/failed/skipped/error counts from pytest's last summary line."""
    text = log.read_text(errors="replace")
    tail = text.strip().splitlines()[-1] if text.strip() else ""
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|xfailed)", tail)}
    counts["failures"] = re.findall(r"^(?:FAILED|ERROR) (\S+)", text, flags=re.M)
    return counts


def pytest_cmd(target: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "pytest", target, "-p", "no:cacheprovider", *args]


def collect(cmd: list[str], log: Path) -> tuple[int, float]:
    """Smoke mode: collect the tests `cmd` would run, in this process (one torch import for all phases);
    exit code 0 when the selection is not empty, 5 (pytest's "no tests") otherwise."""
    import contextlib

    import pytest

    class Count:
        items = 0

        def pytest_collection_finish(self, session):
            Count.items = len(session.items)

    start = time.time()
    # Collecting needs no benchmark options (pytest-benchmark refuses --benchmark-only inside an xdist worker).
    args = [a for a in cmd[cmd.index("pytest") + 1 :] if not a.startswith("--benchmark")]
    with open(log, "w") as out, contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = pytest.main([*args, "--collect-only", "-q", "-p", "no:xdist"], plugins=[Count()])
        print(f"pytest exit code {code}; {Count.items} tests collected")
    return (0 if Count.items else 5), time.time() - start


def run_tests(cmd: list[str], log: Path, timeout: float, env: dict | None, smoke: bool) -> dict:
    """A pytest job's result: run it (timed out after `timeout`), or in smoke mode only collect it."""
    if smoke:
        code, secs = collect(cmd, log)
        return {"ok": code == 0, "collected": int(log.read_text().split()[-3]), "seconds": round(secs, 1)}
    # One module that cannot be imported there must not leave the phase without its other tests.
    code, secs = run([*cmd, "--continue-on-collection-errors"], log, timeout, env)
    return {"ok": code == 0, "seconds": round(secs, 1), **pytest_counts(log)}


def phase_cuda_tests(logs: Path, timeout: float, smoke: bool = False) -> dict:
    import importlib.util

    # pytest-xdist, where installed: faster, and a crashing test is reported instead of ending the run.
    parallel = ["-n", "8"] if importlib.util.find_spec("xdist") and not smoke else []
    # The tools run as scripts in subprocesses: they find the in-place build through PYTHONPATH.
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return run_tests(
        pytest_cmd("tests", "-m", "cuda", "-v", "-ra", *parallel),
        logs / "cuda_tests.log",
        timeout,
        {"PYTHONPATH": path},
        smoke,
    )


def phase_sanitizers(logs: Path, timeout: float, smoke: bool = False) -> dict:
    tool = shutil.which("compute-sanitizer") or "/usr/local/cuda/bin/compute-sanitizer"
    if not smoke and not Path(tool).exists():
        return {"ok": False, "error": "compute-sanitizer not found"}
    deadline, results = time.time() + timeout, {}
    for index, name in enumerate(SANITIZERS):
        log = logs / f"sanitizer_{name}.log"
        # memcheck/racecheck/synccheck instrument only our kernels (torch's are not ours to fix). Not
        # initcheck: writes by uninstrumented kernels go unseen, so every tensor torch filled would be
        # reported "uninitialized" when ours read it (docs/speed.md).
        only_ours = [] if name == "initcheck" else ["--kernel-name", "kns=ssdfast"]
        tests = pytest_cmd("tests/test_ops.py", "-q", "-m", "cuda", "-k", "not clear_errors and not device_mismatch")
        if smoke:  # the same selection for every sanitizer: collected once
            return {"ok": run_tests(tests, log, timeout, None, smoke)["ok"], "sanitizers": SANITIZERS}
        # No caching allocator, so out-of-bounds accesses hit real allocation edges.
        cmd = [tool, "--tool", name, *only_ours, "--error-exitcode", "99", *tests]
        share = (deadline - time.time()) / (len(SANITIZERS) - index)  # each sanitizer capped at its share
        code, secs = run(cmd, log, share, {"PYTORCH_NO_CUDA_MEMORY_CACHING": "1"})
        summary = re.findall(r"ERROR SUMMARY: (\d+) error", log.read_text(errors="replace"))
        results[name] = {
            "ok": code == 0 and bool(summary) and int(summary[-1]) == 0,
            "exit_code": code,
            "errors": int(summary[-1]) if summary else None,
            "seconds": round(secs, 1),
            **pytest_counts(log),
        }
    return {"ok": all(r["ok"] for r in results.values()), **results}


def phase_profile(logs: Path, timeout: float, smoke: bool = False) -> dict:
    """benchmarks/profile_step.py: where the SSD300 b128 step's GPU time goes, fp16 against bf16."""
    out = logs / "profile.json"
    out.unlink(missing_ok=True)
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)  # the in-place build
    cmd = [sys.executable, "benchmarks/profile_step.py", "--out", str(out), *(["--smoke"] if smoke else [])]
    code, secs = run(cmd, logs / "profile.log", timeout, {"PYTHONPATH": path})
    result = {"ok": code == 0, "seconds": round(secs, 1)}
    if out.exists():  # what was profiled before a cut-off is kept
        for dtype, found in json.loads(out.read_text()).items():
            if isinstance(found, dict):
                result[dtype] = {k: found[k] for k in ("kernel_ms_per_step", "families_pct", "batchnorm_kernels")}
    return result


def bench_phase(phase: str):
    """A phase made of benchmark parts (BENCH_PARTS[phase]), each published as soon as it ends."""

    def phase_fn(logs: Path, timeout: float, smoke: bool = False) -> dict:
        deadline, results = time.time() + timeout, {}
        # torch.compile's Inductor cache lives under the logs: carried into a rerun on the same machine, warm.
        env = {"TORCHINDUCTOR_CACHE_DIR": str(logs / "inductor_cache")}
        # Inductor says why it did not use CUDA graphs (reduce-overhead) in its perf hints; -s lets them reach the log.
        hints = ["-s"] if phase == "compiled" else []
        if hints:
            env["TORCH_LOGS"] = "perf_hints"
        for name, expr in BENCH_PARTS[phase]:
            out, log = logs / f"bench_{name}.json", logs / f"bench_{name}.log"
            results[name] = run_tests(
                pytest_cmd("benchmarks", "-q", *hints, "-k", expr, "--benchmark-only", f"--benchmark-json={out}"),
                log,
                deadline - time.time(),
                env,
                smoke,
            )
            skips = re.findall(r".*skipping cudagraphs.*", log.read_text(errors="replace")) if log.exists() else []
            if skips:  # the reduce-overhead rung then times no CUDA graph: say so beside its number
                results[name]["cudagraph_skips"] = sorted(set(skips))[:3]
            if not smoke:
                publish(logs, {phase: results})
            if time.time() > deadline - MIN_PHASE_SECONDS:
                break
        missing = [name for name, _ in BENCH_PARTS[phase] if name not in results]
        return {
            "ok": all(r["ok"] for r in results.values()) and not missing,
            **results,
            **({"not_run": missing} if missing else {}),
        }

    return phase_fn


PHASE_FUNCTIONS = {
    "build": phase_build,
    "cuda_tests": phase_cuda_tests,
    "sanitizers": phase_sanitizers,
    "profile": phase_profile,
    **{phase: bench_phase(phase) for phase in BENCH_PARTS},
}
assert set(PHASE_FUNCTIONS) == set(PHASES), "every phase needs one function"


def publish(logs: Path, checks: dict) -> None:
    """Rewrite benchmarks/results/<gpu>.json and docs/speed.md's table from every benchmark JSON so far."""
    state = logs / "checks.json"
    merged = json.loads(state.read_text()) if state.exists() else {}
    merged.update(checks)
    state.write_text(json.dumps(merged, indent=1))
    parts = sorted(str(p) for p in logs.glob("bench_*.json") if p.stat().st_size > 0)
    subprocess.run([sys.executable, "benchmarks/report.py", *parts, "--checks", str(state)], cwd=ROOT)


# What the tests and benchmarks import besides torch (a module missing there leaves whole phases without tests).
REQUIRED_MODULES = ["pycocotools", "cv2", "numpy", "pytest", "pytest_benchmark", "PIL", "tqdm"]


def missing_modules() -> list[str]:
    import importlib.util

    return [name for name in REQUIRED_MODULES if importlib.util.find_spec(name) is None]


def print_plan(phases: list[str]) -> None:
    print("gpu_check: no CUDA GPU visible, nothing to verify here. On a GPU machine this would run, in this order:")
    for phase in phases:
        what = re.search(rf"^  {phase} +(.*)$", __doc__, flags=re.M)
        print(f"  {phase:11s} {what.group(1) if what else ''} (at most {PHASE_CAPS[phase]} s)")


def main(argv=None) -> int:
    args = get_args(argv)
    phases = [p for p in PHASES if p in (args.only or PHASES)]  # always in priority order
    import torch

    if not torch.cuda.is_available() and not args.smoke:
        print_plan(phases)
        return 0
    missing = missing_modules()
    if missing:
        print(
            f"gpu_check: missing Python packages: {', '.join(missing)}; without network, carry their wheels: "
            "`make gpu-wheels GPU_WHEELS='NAME==VERSION ...'` on a machine with pip, then `make gpu` here installs .whl/",
            file=sys.stderr,
        )
        return 1
    logs = ROOT / args.logs
    logs.mkdir(parents=True, exist_ok=True)
    device = (
        "CPU (smoke: selections collected, nothing measured)"
        if args.smoke
        else f"{torch.cuda.get_device_name()} (sm {cuda_arch()})"
    )
    print(f"gpu_check: {device}, torch {torch.__version__}, budget {args.budget:.0f} s, logs in {logs}", flush=True)
    deadline, failed, skipped = time.time() + args.budget, [], []
    for phase in phases:
        left = deadline - time.time()
        if left < MIN_PHASE_SECONDS:
            skipped.append(phase)
            continue
        print(f"== {phase} (up to {min(PHASE_CAPS[phase], left):.0f} s)", flush=True)
        result = PHASE_FUNCTIONS[phase](logs, min(PHASE_CAPS[phase], left), args.smoke)
        print(json.dumps(result, indent=1), flush=True)
        if not args.smoke:
            publish(logs, {phase: result})
        if not result.get("ok"):
            failed.append(phase)
            if phase == "build":
                print(f"gpu_check: the build failed, see {logs}/build*.log", file=sys.stderr)
                return 1
    if skipped:
        print(f"gpu_check: out of budget, not run: {', '.join(skipped)} (run them with --only)")
    print("gpu_check: all phases passed" if not failed else f"gpu_check: failed phases: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
