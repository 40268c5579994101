"""Benchmark workloads and conventions.

Every benchmark belongs to a group (pytest-benchmark `group`) holding the candidates compared in the
same run; extra_info["role"] marks the baseline of the group ("baseline") and the others
("candidate"); extra_info["items"] is the work per call (images, or 1) for throughput.
benchmarks/report.py turns the JSON into ratios, benchmarks/results/<machine>.json and docs/speed.md's table.
"""

from __future__ import annotations

import os

import pytest
import torch

from ssdfast.data.synthetic import write_synthetic_coco

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` smoke-runs the benchmarks (--benchmark-disable: once each, nothing timed) on two xdist
    # workers: one thread each, as in tests/conftest.py. pytest-xdist never runs for `make bench`.
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


def run(benchmark, fn, *, role: str, items: int = 1, rounds: int = 5, warmup: int = 1, device: str = "cpu"):
    """Time fn() with explicit rounds; on CUDA, synchronise so the kernel time is measured."""
    benchmark.extra_info.update(role=role, items=items, device=device)

    def call():
        out = fn()
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    return benchmark.pedantic(call, rounds=rounds, iterations=1, warmup_rounds=warmup)


@pytest.fixture(scope="session")
def bench_coco(tmp_path_factory):
    """The synthetic COCO-layout set at demo size (256 train, 64 val images)."""
    return write_synthetic_coco(tmp_path_factory.mktemp("bench_coco"), num_train=256, num_val=64, seed=0)


def pytest_benchmark_update_machine_info(config, machine_info):
    """Record torch, CUDA and the GPU in the JSON, so results can be reported on another machine."""
    from report import this_machine

    machine_info["ssdfast"] = this_machine()


def pytest_terminal_summary(terminalreporter, config):
    """Print each group's ratios (baseline median / candidate median) after the run."""
    session = getattr(config, "_benchmarksession", None)
    if session is None or not session.benchmarks:
        return
    groups: dict[str, list] = {}
    for bench in session.benchmarks:
        if bench.stats is not None and getattr(bench.stats, "data", None) and bench.stats.median:
            groups.setdefault(bench.group, []).append(bench)
    terminalreporter.section("ssdfast speed ratios (baseline median / candidate median)")
    for group, benches in sorted(groups.items()):
        base = [b for b in benches if b.extra_info.get("role") == "baseline"]
        if not base:
            continue
        for bench in benches:
            if bench.extra_info.get("role") != "baseline":
                ratio = base[0].stats.median / bench.stats.median
                terminalreporter.write_line(f"{group}: {bench.name} is {ratio:.1f}x {base[0].name}")
