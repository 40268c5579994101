"""Runs tools/<name>.py for the tests in processes forked from one that has already imported PyTorch,
torchvision, OpenCV and ssdfast: each run is still its own process (its own argv, environment, working
folder, stdin/stdout/stderr, signal handlers and exit code, Python's own exit), without paying the
imports again, nor the teardown of every module at exit (leave()). The imports cost 3-5 CPU-seconds per run on a 2-core machine, and the suite runs the
tools a few hundred times: most of its time went there.

Protocol, one JSON line each way on the server's stdin/stdout:
    request  {"argv": [script, *args], "cwd": ..., "env": {...}, "stdout": path, "stderr": path (the same
              path: one merged file), "session": bool (own session and process group)}
    replies  {"pid": pid of the run}, then {"returncode": subprocess's convention (-N: killed by signal N)}

Forking is safe only from a single-threaded process (a lock held by another thread at the fork stays held
in the child forever). So the server imports nothing that starts a thread (onnxruntime does: the runs
import it themselves) and refuses to serve when a second thread exists; tests/conftest.py then runs the
tools as plain subprocesses.
"""

import json
import os
import signal
import sys

# Everything the tools import that starts no thread. Not onnxruntime (it starts one at import).
PREIMPORTED = (
    "numpy",
    "cv2",
    "torch",
    "torchvision",
    "pycocotools.coco",
    "pycocotools.cocoeval",
    "tqdm",
    "yaml",
    "PIL.Image",
    "matplotlib.pyplot",
    "ssdfast.detector",
    "ssdfast.inference",
    "ssdfast.data",
    "ssdfast.evaluation.loop",
    "ssdfast.training.run",
    "ssdfast.training.config",
)


def threads() -> int:
    return len(os.listdir("/proc/self/task"))


def serve() -> dict | None:
    """Answer requests until stdin closes (-> None); in a forked child, the request it is to run."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    for name in PREIMPORTED:
        __import__(name)
    if threads() != 1:
        print(json.dumps({"refused": f"{threads()} threads after the imports"}), flush=True)
        return None
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            return request
        print(json.dumps({"pid": pid}), flush=True)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}), flush=True)
    return None


def become(request: dict) -> None:
    """Turn this forked child into `python script args...` started in request's folder and environment."""
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    if request.get("session"):
        os.setsid()  # its own session and process group, as Popen(start_new_session=True)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
        if fd == 2 and path == request["stdout"]:
            os.dup2(1, 2)  # one file, one offset: stdout and stderr interleave as they are written
            continue
        file = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(file, fd)
        os.close(file)
    sys.stdin = open(0, closefd=False)  # noqa: SIM115 (the process's own stdin, for its life)
    script = request["argv"][0]
    sys.argv = list(request["argv"])
    sys.path[0] = os.path.dirname(os.path.abspath(script))  # as `python script` sets it


def run_script() -> int:
    """Run sys.argv[0] as `python script` would, -> its exit status (Python's rules for SystemExit; -N:
    end by signal N)."""
    import runpy
    import traceback

    try:
        runpy.run_path(sys.argv[0], run_name="__main__")
    except SystemExit as stop:
        if stop.code is None or isinstance(stop.code, int):
            return (stop.code or 0) & 0xFF
        print(stop.code, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        traceback.print_exc()
        return -signal.SIGINT  # Python ends itself by SIGINT then
    except BaseException:
        traceback.print_exc()
        return 1
    return 0


def leave(code: int) -> None:
    """Python's exit, less the teardown of every module (4-5 s with PyTorch and matplotlib imported):
    non-daemon threads joined, atexit handlers run, stdio flushed, then the process ends."""
    import atexit
    import threading

    threading._shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    if code < 0:
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    os._exit(code)


if __name__ == "__main__":
    request = serve()
    if request is None:
        sys.exit(0)
    become(request)
    del request
    leave(run_script())
