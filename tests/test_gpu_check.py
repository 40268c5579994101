"""tools/gpu_check.py (make gpu) without a GPU: its budget and its smoke mode, so no device minute is
spent finding a typo in a phase."""

import json
import time

import gpu_check  # tools/gpu_check.py (pyproject.toml puts tools/ on pytest's path)
import pytest
import torch

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU behaviour")


def test_every_phase_has_a_cap_a_function_and_a_line_in_the_plan(capsys):
    assert gpu_check.main(["--only", "sanitizers", "build"]) == 0
    plan = capsys.readouterr().out.splitlines()
    # Phases run in priority order whatever order --only names them.
    assert [line.split()[0] for line in plan[1:]] == ["build", "sanitizers"]
    assert set(gpu_check.PHASE_CAPS) == set(gpu_check.PHASE_FUNCTIONS) == set(gpu_check.PHASES)


def test_smoke_collects_every_selection_of_a_phase(tmp_path, capsys):
    assert gpu_check.main(["--smoke", "--only", "ladder", "inference", "--logs", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    results = [json.loads(block) for block in out.split("\n{")[1:] for block in ["{" + block.split("\n}")[0] + "\n}"]]
    counts = {name: part["collected"] for result in results for name, part in result.items() if isinstance(part, dict)}
    assert set(counts) == {name for phase in ("ladder", "inference") for name, _ in gpu_check.BENCH_PARTS[phase]}
    assert all(n > 0 for n in counts.values()), counts
    assert not (tmp_path / "checks.json").exists()  # smoke publishes nothing


def test_smoke_fails_on_a_selection_that_selects_nothing(tmp_path, monkeypatch):
    monkeypatch.setitem(gpu_check.BENCH_PARTS, "ops", [("ops", "test_no_such_benchmark_anywhere")])
    assert gpu_check.main(["--smoke", "--only", "ops", "--logs", str(tmp_path)]) == 1


def test_phases_that_no_longer_fit_the_budget_are_skipped_and_named(tmp_path, capsys, monkeypatch):
    def slow_build(logs, timeout, smoke):  # a phase that leaves less than MIN_PHASE_SECONDS of the budget
        assert timeout <= gpu_check.MIN_PHASE_SECONDS + 1
        time.sleep(1.5)
        return {"ok": True}

    monkeypatch.setitem(gpu_check.PHASE_FUNCTIONS, "build", slow_build)
    assert (
        gpu_check.main(
            [
                "--smoke",
                "--budget",
                str(gpu_check.MIN_PHASE_SECONDS + 1),
                "--only",
                "build",
                "ops",
                "sanitizers",
                "--logs",
                str(tmp_path),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "== build" in out and "== ops" not in out
    assert "out of budget, not run: ops, sanitizers" in out
