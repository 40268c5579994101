"""Verify and measure every GPU path in one command (`make gpu`).

    python tools/gpu_check.py                 # all phases
    python tools/gpu_check.py --only bench    # one phase (build, tests, sanitizers, graph, bench, compile)

For a machine that already has PyTorch with CUDA and may have no network: nothing is installed, no
venv is made. Phases, in order, each logged to --logs/<phase>.log:
  build       compile ssdfast._C in place against the installed torch, for the visible GPU
  tests       every test (CUDA ones included) with pytest
  sanitizers  the CUDA op tests under compute-sanitizer memcheck, racecheck, synccheck, initcheck
  bench       GPU benchmarks (training ladder, data-fed step, inference, ops vs torchvision)
  compile     the training step with torch.compile (one extra rung of the ladder; slow to compile)
After each phase, benchmarks/results/<gpu>.json holds everything measured so far (with the check
results) and docs/speed.md's table is regenerated, so a run that is cut off keeps what it measured.
Without a GPU it prints what it would run and exits 0 (CI runs it that way so it cannot rot).
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
PHASES = ["build", "tests", "sanitizers", "bench", "compile"]
SANITIZERS = ["memcheck", "racecheck", "synccheck", "initcheck"]
# Benchmark parts: (name, pytest -k expression). Each writes its own JSON as soon as it ends.
BENCH_PARTS = [("ops", "cuda and (test_match_encode or test_batched_nms or test_box_iou or test_box_decode)"),
               ("postprocess", "test_postprocess and cuda"),
               ("inference", "test_inference and cuda"),
               ("train", "test_train_step_cuda and not channels_last_compiled"),
               ("train_data", "test_train_from_loader_cuda")]


ERROR_PATH_CHECK = """
import torch, ssdfast.ops
for device in ("cpu", "cuda"):
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
    p.add_argument("--phase-timeout", type=int, default=600, help="seconds before a phase is stopped")
    return p.parse_args(argv)


def run(cmd: list[str], log: Path, timeout: int, env: dict | None = None) -> tuple[int, float]:
    """Run cmd with its output in `log`; (exit code, seconds). 124 means it ran out of time."""
    start = time.time()
    with open(log, "w") as out:
        out.write("$ " + " ".join(cmd) + "\n")
        out.flush()
        try:
            code = subprocess.run(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, timeout=timeout,
                                  env={**os.environ, **(env or {})}).returncode
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


def phase_build(logs: Path, timeout: int) -> dict:
    import torch

    cuda_home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    nvcc, torch_cuda = nvcc_major(cuda_home), int(torch.version.cuda.split(".")[0])
    if nvcc is None:
        return {"ok": False, "error": f"no nvcc under CUDA_HOME={cuda_home}: set CUDA_HOME to the CUDA toolkit"}
    if nvcc != torch_cuda:
        return {"ok": False, "error": f"nvcc is CUDA {nvcc} but torch {torch.__version__} was built with CUDA "
                                      f"{torch.version.cuda}: the extension cannot link; use a toolkit of CUDA {torch_cuda}"}
    env = {"CUDA_HOME": cuda_home, "TORCH_CUDA_ARCH_LIST": cuda_arch(), "FORCE_CUDA": "1",
           "MAX_JOBS": str(os.cpu_count())}
    compilers = [{}]  # the environment's compiler first (CC/CXX if set)
    if os.environ.get("CXX") and Path("/usr/bin/g++").exists() and os.environ["CXX"] != "/usr/bin/g++":
        compilers.append({"CC": "/usr/bin/gcc", "CXX": "/usr/bin/g++"})
    for attempt, compiler in enumerate(compilers):
        shutil.rmtree(ROOT / "build", ignore_errors=True)  # objects of another compiler must not be reused
        code, secs = run([sys.executable, "setup.py", "build_ext", "--inplace"], logs / f"build{attempt or ''}.log",
                         timeout, {**env, **compiler})
        result = {"ok": code == 0, "seconds": round(secs, 1), "arch": env["TORCH_CUDA_ARCH_LIST"],
                  "cxx": compiler.get("CXX", os.environ.get("CXX", "c++"))}
        if code != 0:
            return result
        # A bad-input error must reach Python as a RuntimeError on both backends. Seen on a lent H100:
        # its wrapper compiler (CXX=/opt/gcc/bin/g++) put a copy of libstdc++'s stream code into _C.so,
        # and formatting the first number of an error message crashed the process; the system g++ of
        # the same version did not. So: check, and on a crash rebuild once with the system compiler.
        check, _ = run([sys.executable, "-c", ERROR_PATH_CHECK], logs / f"build{attempt or ''}_error_path.log", 120)
        if check == 0:
            return result
        result.update(ok=False, error="ssdfast._C crashes while raising an input error (see build_error_path.log);"
                      " try another compiler, e.g. CC=/usr/bin/gcc CXX=/usr/bin/g++ make gpu")
    return result


def pytest_counts(log: Path) -> dict:
    """passed/failed/skipped/error counts from pytest's last summary line."""
    text = log.read_text(errors="replace")
    tail = text.strip().splitlines()[-1] if text.strip() else ""
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|xfailed)", tail)}
    counts["failures"] = re.findall(r"^(?:FAILED|ERROR) (\S+)", text, flags=re.M)
    return counts


def phase_tests(logs: Path, timeout: int) -> dict:
    import importlib.util

    # pytest-xdist, where installed: faster, and a crashing test is reported instead of ending the run.
    parallel = ["-n", "8"] if importlib.util.find_spec("xdist") else []
    # The tools run as scripts in subprocesses: they find the in-place build through PYTHONPATH.
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    code, secs = run([sys.executable, "-m", "pytest", "tests", "-v", "-ra", "-p", "no:cacheprovider", *parallel],
                     logs / "tests.log", timeout, {"PYTHONPATH": path})
    return {"ok": code == 0, "seconds": round(secs, 1), **pytest_counts(logs / "tests.log")}


def phase_sanitizers(logs: Path, timeout: int) -> dict:
    tool = shutil.which("compute-sanitizer") or "/usr/local/cuda/bin/compute-sanitizer"
    if not Path(tool).exists():
        return {"ok": False, "error": "compute-sanitizer not found"}
    results = {}
    for name in SANITIZERS:
        log = logs / f"sanitizer_{name}.log"
        # memcheck/racecheck/synccheck instrument only our kernels (torch's are not ours to fix). Not
        # initcheck: writes by uninstrumented kernels go unseen, so every tensor torch filled would be
        # reported "uninitialized" when ours read it (seen on the H100: 97 such reports).
        only_ours = [] if name == "initcheck" else ["--kernel-name", "kns=ssdfast"]
        # No caching allocator, so out-of-bounds accesses hit real allocation edges.
        cmd = [tool, "--tool", name, *only_ours, "--error-exitcode", "99",
               sys.executable, "-m", "pytest", "tests/test_ops.py", "-q", "-m", "cuda", "-p", "no:cacheprovider",
               "-k", "not clear_errors and not device_mismatch"]  # those two launch no kernel
        code, secs = run(cmd, log, timeout // 2, {"PYTORCH_NO_CUDA_MEMORY_CACHING": "1"})
        summary = re.findall(r"ERROR SUMMARY: (\d+) error", log.read_text(errors="replace"))
        results[name] = {"exit_code": code, "errors": int(summary[-1]) if summary else None,
                         "seconds": round(secs, 1), **pytest_counts(log)}
    ok = all(r["exit_code"] == 0 and r["errors"] == 0 for r in results.values())
    return {"ok": ok, **results}


def phase_bench(logs: Path, timeout: int, parts=BENCH_PARTS) -> dict:
    results = {}
    for name, expr in parts:
        out = logs / f"bench_{name}.json"
        code, secs = run([sys.executable, "-m", "pytest", "benchmarks", "-q", "-k", expr, "--benchmark-only",
                          f"--benchmark-json={out}", "-p", "no:cacheprovider"], logs / f"bench_{name}.log", timeout)
        results[name] = {"ok": code == 0, "seconds": round(secs, 1), **pytest_counts(logs / f"bench_{name}.log")}
        publish(logs, {"bench": results})
    return {"ok": all(r["ok"] for r in results.values()), **results}


def phase_compile(logs: Path, timeout: int) -> dict:
    return phase_bench(logs, timeout, parts=[("compile", "test_train_step_cuda and channels_last_compiled")])


def publish(logs: Path, checks: dict) -> None:
    """Rewrite benchmarks/results/<gpu>.json and docs/speed.md's table from every benchmark JSON so far."""
    state = logs / "checks.json"
    merged = json.loads(state.read_text()) if state.exists() else {}
    merged.update(checks)
    state.write_text(json.dumps(merged, indent=1))
    parts = sorted(str(p) for p in logs.glob("bench_*.json") if p.stat().st_size > 0)
    subprocess.run([sys.executable, "benchmarks/report.py", *parts, "--checks", str(state)], cwd=ROOT)


def main(argv=None) -> int:
    args = get_args(argv)
    phases = args.only or PHASES
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU visible, nothing to verify here. On a GPU machine this would run:")
        for phase in phases:
            what = re.search(rf"^  {phase} +(.*)$", __doc__, flags=re.M)
            print(f"  {phase:11s} {what.group(1) if what else ''}")
        print(f"  sanitizers: {', '.join(SANITIZERS)}; benchmark parts: {', '.join(n for n, _ in BENCH_PARTS)}")
        return 0
    logs = ROOT / args.logs
    logs.mkdir(parents=True, exist_ok=True)
    print(f"gpu_check: {torch.cuda.get_device_name()} (sm {cuda_arch()}), torch {torch.__version__}, logs in {logs}")
    failed = []
    for phase in phases:
        print(f"== {phase}", flush=True)
        result = globals()[f"phase_{phase}"](logs, args.phase_timeout)
        print(json.dumps(result, indent=1), flush=True)
        publish(logs, {phase: result})
        if not result.get("ok"):
            failed.append(phase)
            if phase == "build":
                print(f"gpu_check: the build failed, see {logs / 'build.log'}", file=sys.stderr)
                return 1
    print("gpu_check: all phases passed" if not failed else f"gpu_check: failed phases: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
