"""Issue 29, kinds 2, 5 (a full disk) and 6: no output lands on an input or on a file ssdfast did not
write, a stop while eval writes keeps the old pair or the new one, and a picture or log line that cannot
be written does not end a training run."""

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import detect
import eval as eval_tool  # tools/*.py: pyproject.toml puts tools/ on pytest's path
import export
import pytest
import torch
import train
from conftest import ROOT, tool
from test_bad_input import fake_weights, names_of

from ssdfast.machinery import outputs
from ssdfast.machinery.outputs import (
    OWN_FILES,
    OutputError,
    check_outputs,
    finish_interrupted,
    is_own,
    write_json_atomic,
    write_together,
)
from ssdfast.training import pictures
from ssdfast.training.run_log import RunLog


# ---------------------------------------------------------------- the rule, for every tool and input kind
@pytest.fixture
def run_files(tmp_path):
    """Inputs as the tools see them before any work (nothing here is read: the check comes first)."""
    data = tmp_path / "data"
    (data / "annotations").mkdir(parents=True)
    (data / "val2017").mkdir()
    (data / "annotations" / "instances_val2017.json").write_text('{"images": []}')
    (data / "val2017" / "a.jpg").write_bytes(b"an image")
    (tmp_path / "w.pt").write_bytes(b"the weights")
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "p.jpg").write_bytes(b"a photo")
    (tmp_path / "photos" / "p.json").write_text('{"shapes": []}')  # a LabelMe annotation beside it
    (tmp_path / "clip.mp4").write_bytes(b"a video")
    (tmp_path / "foreign.json").write_text("a user's file")
    (tmp_path / "foreign.pt2").write_bytes(b"a user's file")
    (tmp_path / "x.metrics.json").write_text("a user's file")  # where eval --output x.json puts its metrics
    (tmp_path / "link.json").symlink_to(tmp_path / "w.pt")
    (tmp_path / "link.png").symlink_to(tmp_path / "w.pt")
    os.link(tmp_path / "w.pt", tmp_path / "hard.pt2")
    return tmp_path


def eval_argv(t, output, *extra):
    return ["--data-path", t / "data", "--weights", t / "w.pt", "--output", output, *extra]


def detect_argv(t, source, output):
    return ["--weights", t / "w.pt", "--input", source, "--output", output]


def export_argv(t, output):
    return ["--weights", t / "w.pt", "--format", "torch-export", "--output", output]


def train_argv(t, save, *extra):
    return ["--data-path", t / "data", "--save-folder", save, "--backbone-weights", "none", *extra]


# (tool, input kind) -> (argv from the folder, the words the error line holds)
CASES = {
    ("eval", "weights"): (lambda t: eval_argv(t, t / "w.pt"), "would overwrite the weights"),
    ("eval", "weights through a symlink"): (lambda t: eval_argv(t, t / "link.json"), "would overwrite the weights"),
    ("eval", "weights through '..'"): (
        lambda t: eval_argv(t, t / "photos" / ".." / "w.pt"),
        "would overwrite the weights",
    ),
    ("eval", "annotation file"): (
        lambda t: [
            "--ann",
            t / "foreign.json",
            "--images",
            t / "photos",
            "--weights",
            t / "w.pt",
            "--output",
            t / "foreign.json",
        ],
        "would overwrite the annotation file",
    ),
    ("eval", "dataset folder"): (
        lambda t: eval_argv(t, t / "data" / "annotations" / "instances_val2017.json"),
        "lies inside the dataset folder",
    ),
    ("eval", "image folder"): (
        lambda t: [
            "--ann",
            t / "data" / "annotations" / "instances_val2017.json",
            "--images",
            t / "photos",
            "--weights",
            t / "w.pt",
            "--output",
            t / "photos" / "new.json",
        ],
        "lies inside the image folder",
    ),
    ("eval", "foreign file"): (lambda t: eval_argv(t, t / "foreign.json"), "was not written by ssdfast"),
    ("eval", "foreign metrics sidecar"): (lambda t: eval_argv(t, t / "x.json"), "metrics file"),
    ("detect", "weights"): (
        lambda t: detect_argv(t, t / "photos" / "p.jpg", t / "link.png"),
        "would overwrite the weights",
    ),
    ("detect", "image"): (
        lambda t: detect_argv(t, t / "photos" / "p.jpg", t / "photos" / "p.jpg"),
        "would overwrite the input image",
    ),
    ("detect", "image folder"): (
        lambda t: detect_argv(t, t / "photos", t / "photos" / "drawn"),
        "lies inside the input folder",
    ),
    ("detect", "video"): (lambda t: detect_argv(t, t / "clip.mp4", t / "clip.mp4"), "would overwrite the input video"),
    ("detect", "foreign sidecar"): (
        lambda t: detect_argv(t, t / "data" / "val2017" / "a.jpg", t / "photos" / "p.png"),
        "detections file",
    ),
    ("export", "weights"): (lambda t: export_argv(t, t / "hard.pt2"), "would overwrite the weights"),
    ("export", "foreign file"): (lambda t: export_argv(t, t / "foreign.pt2"), "was not written by ssdfast"),
    ("train", "dataset folder"): (lambda t: train_argv(t, t / "data" / "runs"), "lies inside the dataset folder"),
    ("train", "weights"): (
        lambda t: train_argv(t, t, "--weights", t / "w.pt"),
        "the weights",
    ),
    ("train", "annotation file"): (
        lambda t: ["--train-ann", t / "foreign.json", "--train-images", t / "photos", "--save-folder", t / "photos"],
        "lies inside the image folder",
    ),
}
TOOLS = {"eval": eval_tool.main, "detect": detect.main, "export": export.main, "train": train.run}


@pytest.mark.parametrize("case", list(CASES), ids=["-".join(c) for c in CASES])
def test_no_tool_writes_over_an_input_or_a_file_it_did_not_write(case, run_files, capsys):
    name, kind = case
    make_argv, words = CASES[case]
    before = {p: p.read_bytes() for p in run_files.rglob("*") if p.is_file()}
    code = TOOLS[name]([str(a) for a in make_argv(run_files)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and err[0].startswith("error: "), err
    assert words in err[0], err
    assert "would overwrite" in err[0] or "lies inside" in err[0] or "not written by ssdfast" in err[0]
    after = {p: p.read_bytes() for p in run_files.rglob("*") if p.is_file()}
    assert after == before  # nothing written, nothing replaced, no folder filled


def test_an_input_inside_an_output_folder_is_refused(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "start.pt").write_bytes(b"x")
    with pytest.raises(ValueError, match="the weights .*start.pt lies inside the save folder"):
        check_outputs(folders=[("save folder", tmp_path / "run")], inputs=[("weights", tmp_path / "run" / "start.pt")])
    check_outputs(folders=[("save folder", tmp_path / "other")], inputs=[("weights", tmp_path / "run" / "start.pt")])


# ---------------------------------------------------------------- what ssdfast wrote: the ledger
def test_a_file_ssdfast_wrote_may_be_replaced_until_someone_changes_it(tmp_path):
    out = tmp_path / "det.json"
    write_json_atomic(out, [1, 2], claim=True)
    assert is_own(out)
    check_outputs([("detections file", out)])  # a rerun may replace it
    write_json_atomic(out, [3], claim=True)
    assert is_own(out)
    out.write_text("[3]\n")  # edited by a user (another size and digest): theirs now
    assert not is_own(out)
    with pytest.raises(ValueError, match="was not written by ssdfast"):
        check_outputs([("detections file", out)])
    out.unlink()
    out.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ValueError, match="is a symbolic link"):
        check_outputs([("detections file", out)])
    with pytest.raises(ValueError, match="list of the files it wrote"):
        check_outputs([("detections file", tmp_path / OWN_FILES)])
    # A torn line in the ledger (a kill) costs nothing but that line.
    with open(tmp_path / OWN_FILES, "a") as f:
        f.write('{"name": "det.js')
    write_json_atomic(tmp_path / "b.json", [], claim=True)
    assert is_own(tmp_path / "b.json")


def test_the_ledger_stays_small_over_many_reruns(tmp_path):
    for i in range(200):
        write_json_atomic(tmp_path / "a.json", [i], claim=True)
    lines = (tmp_path / OWN_FILES).read_text().splitlines()
    assert len(lines) <= outputs.KEPT_PER_NAME + 65 and is_own(tmp_path / "a.json")


# ---------------------------------------------------------------- kind 6: a stop while eval writes
OLD = {"det.json": b'["old detections"]', "det.metrics.json": b'{"old": 1}'}
NEW = {"det.json": b'["new detections"]', "det.metrics.json": b'{"new": 1}'}


class Stop(BaseException):
    """Stands for a signal at one point of the write (a KeyboardInterrupt, a SIGTERM handler's exit)."""


def state(folder):
    return {name: (folder / name).read_bytes() if (folder / name).exists() else None for name in OLD}


def test_a_stop_at_any_point_of_the_pair_write_leaves_the_old_pair_or_the_new(tmp_path, monkeypatch):
    """Each os call of write_together in turn raises: the folder holds the old pair or the new, or a
    commit note that the next run's check completes to the new one; temporaries are cleared."""
    calls = ["replace", "fsync", "write", "unlink", "open", "chmod", "ftruncate"]
    real = {name: getattr(os, name) for name in calls}
    seen = []

    def counting(name, stop_at):
        def call(*args, **kwargs):
            seen.append(name)
            if len(seen) == stop_at:
                raise Stop(f"stopped at {name}")
            return real[name](*args, **kwargs)

        return call

    outcomes = set()
    for stop_at in range(1, 200):
        folder = tmp_path / str(stop_at)
        folder.mkdir()
        write_together([(folder / n, n, data) for n, data in OLD.items()])
        seen.clear()
        with monkeypatch.context() as m:
            for name in calls:
                m.setattr(os, name, counting(name, stop_at))
            try:
                write_together([(folder / n, n, data) for n, data in NEW.items()])
                finished = True
            except Stop:
                finished = False
        if finished:
            assert state(folder) == NEW
            break
        now = state(folder)
        note = folder / ".det.json.commit.json"
        assert now in (OLD, NEW) or note.exists(), (stop_at, seen[-1], now)
        check_outputs([("detections file", folder / "det.json"), ("metrics file", folder / "det.metrics.json")])
        now = state(folder)
        assert now in (OLD, NEW), (stop_at, seen[-1], now)
        outcomes.add(now == NEW)
        assert sorted(p.name for p in folder.iterdir()) == [OWN_FILES, "det.json", "det.metrics.json"]
        assert is_own(folder / "det.json") and is_own(folder / "det.metrics.json")
    else:
        pytest.fail("write_together never finished")
    assert outcomes == {False, True}  # stops before the note keep the old pair, after it give the new one


def test_a_failed_pair_write_keeps_the_previous_pair(tmp_path, monkeypatch):
    write_together([(tmp_path / n, n, data) for n, data in OLD.items()])
    real_write = os.write
    monkeypatch.setattr(
        os, "write", lambda fd, data: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device"))
    )
    with pytest.raises(OutputError, match="no space left.*the previous one is intact"):
        write_together([(tmp_path / n, n, data * 1000) for n, data in NEW.items()])
    monkeypatch.setattr(os, "write", real_write)
    assert state(tmp_path) == OLD and sorted(p.name for p in tmp_path.iterdir())[0] == OWN_FILES
    assert len(list(tmp_path.iterdir())) == 3  # no temporary left


def test_temporaries_of_a_killed_write_are_cleared_by_the_next_run_and_only_theirs(tmp_path):
    out = tmp_path / "det.json"
    stale = [tmp_path / ".det.json.abcd1234.tmp", tmp_path / ".det.json.zz__9y8x.tmp.json"]
    others = [tmp_path / ".other.json.abcd1234.tmp", tmp_path / "det.json.abcd1234.tmp"]
    for p in stale + others:
        p.write_text("x")
    finish_interrupted([out])
    assert not any(p.exists() for p in stale) and all(p.exists() for p in others)


@pytest.mark.slow
def test_sigterm_while_eval_writes_then_a_rerun(synthetic_coco, tmp_path):
    """A real eval killed by SIGTERM as it renames its pair (the first rename: the worst point), then rerun."""
    weights = fake_weights(tmp_path / "w.pt", names_of(synthetic_coco))
    out = tmp_path / "det.json"
    argv = ["--data-path", synthetic_coco, "--weights", weights, "--num-workers", 0, "--output", out]
    tool("eval", *argv, "--score-threshold", "0.01")
    old = state_of(out)
    script = (
        "import os, signal, sys\nsys.path.insert(0, 'tools')\nimport eval as e\nfrom ssdfast.machinery import outputs\n"
        "real = os.replace\n"
        "def replace(a, b):\n    real(a, b)\n    if str(b).endswith('det.json'):\n        os.kill(os.getpid(), signal.SIGTERM)\n"
        "outputs.os.replace = replace\n"
        f"sys.exit(e.main({[str(a) for a in argv] + ['--score-threshold', '0.5']!r}))\n"
    )
    killed = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True)
    assert killed.returncode == -15, killed.stderr
    assert (tmp_path / ".det.json.commit.json").exists()  # the new detections are in, the metrics pending
    tool("eval", *argv, "--score-threshold", "0.5")
    new = state_of(out)
    assert new != old and json.loads(new[1])["detections_sha256"] == __import__("hashlib").sha256(new[0]).hexdigest()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == [OWN_FILES]


def state_of(out):
    return out.read_bytes(), out.with_name(out.stem + ".metrics.json").read_bytes()


# ---------------------------------------------------------------- reruns over ssdfast's own outputs
@pytest.mark.slow
def test_reruns_replace_their_own_outputs(synthetic_coco, tmp_path):
    weights = fake_weights(tmp_path / "w.pt", names_of(synthetic_coco))
    images = sorted((synthetic_coco / "val2017").glob("*.jpg"))[:2]
    for _ in range(2):
        tool("eval", "--data-path", synthetic_coco, "--weights", weights, "--num-workers", 0, "--max-batches", 1)
        tool("detect", "--weights", weights, "--input", images[0], "--output", tmp_path / "one.png")
        tool(
            "detect", "--weights", weights, "--input", synthetic_coco / "val2017" / "*.jpg", "--output", tmp_path / "d"
        )
        tool("export", "--weights", weights, "--format", "torch-export", "--output", tmp_path / "m.pt2")
    (tmp_path / "d" / images[1].name).write_bytes(b"edited by hand")
    edited = tool(
        "detect",
        "--weights",
        weights,
        "--input",
        synthetic_coco / "val2017" / "*.jpg",
        "--output",
        tmp_path / "d",
        check=False,
    )
    assert edited.returncode == 1 and "was not written by ssdfast" in edited.stderr
    assert (tmp_path / "d" / images[1].name).read_bytes() == b"edited by hand"


# ---------------------------------------------------------------- kind 5: a full disk
def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_log_line_that_cannot_be_written_is_one_warning_and_no_empty_log(tmp_path, monkeypatch, capsys):
    log = RunLog(tmp_path, tmp_path / "tb")
    real_write = os.write
    monkeypatch.setattr(os, "write", no_space)
    log.record({"epoch": 0, "loss": 1.0})
    log.record({"epoch": 1, "loss": 0.5})
    assert not (tmp_path / "log.jsonl").exists()
    monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, data[: len(data) // 2]))  # a short write
    log.record({"epoch": 2, "loss": 0.25})
    assert not (tmp_path / "log.jsonl").exists()
    monkeypatch.setattr(os, "write", real_write)
    log.record({"epoch": 3, "loss": 0.125})
    monkeypatch.setattr(log.writer, "add_scalar", no_space)
    log.scalar("train/loss", 1.0, 0)
    log.scalar("train/loss", 1.0, 1)
    log.close()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("warning: cannot write ") for line in err), err
    assert "log.jsonl" in err[0] and "TensorBoard" in err[1]
    assert [json.loads(line)["epoch"] for line in (tmp_path / "log.jsonl").read_text().splitlines()] == [3]


class Batch:
    images = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    boxes = torch.tensor([[[0.1, 0.1, 0.5, 0.5]]] * 2)
    labels = torch.ones(2, 1, dtype=torch.long)


def test_a_picture_that_cannot_be_written_is_one_warning(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(pictures, "_FAILED", set())
    monkeypatch.setattr(outputs.tempfile, "mkstemp", no_space)  # the disk is full from the first byte
    for _ in range(2):
        pictures.save_batch(Batch(), ["thing"], tmp_path / "train_batch0.jpg")
        pictures.save_plots(tmp_path, {})
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all("no space left" in line and "training goes on" in line for line in err), err
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    monkeypatch.setattr(pictures, "_FAILED", set())
    pictures.save_batch(Batch(), ["thing"], tmp_path / "train_batch0.jpg")
    assert pictures.cv2.imread(str(tmp_path / "train_batch0.jpg")).shape[2] == 3


@pytest.mark.slow
def test_export_on_a_full_disk_is_one_line(tmp_path):
    """A real full disk (a 2 MiB tmpfs; root only): torch.export's zip writer used to abort the process."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)]).returncode:
        pytest.skip("cannot mount a small tmpfs here (the in-process test covers the write path)")
    try:
        weights = fake_weights(tmp_path / "w.pt", ["a", "b"])
        result = tool(
            "export", "--weights", weights, "--format", "torch-export", "--output", disk / "m.pt2", check=False
        )
    finally:
        subprocess.run(["umount", str(disk)])
    assert result.returncode == 1 and "terminate called" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: cannot write exported model m.pt2")
    assert "no space left" in result.stderr


def test_export_writes_the_pt2_through_python(tmp_path, monkeypatch):
    """The .pt2 is serialised in memory and written by Python, so a full disk is an OSError (the tool's
    one line), not a C++ exception."""
    from ssdfast.deploy import export as exporter
    from ssdfast.models import build_model

    model = build_model("ssdlite300_mobilenetv2", num_classes=2, backbone_weights="none").eval()
    meta = {"model_name": "ssdlite300_mobilenetv2", "num_classes": 2, "category_names": ["a", "b"]}
    monkeypatch.setattr(
        exporter, "open", lambda *a, **k: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")), raising=False
    )
    monkeypatch.setattr(torch.export, "export", lambda *a, **k: object())
    seen = []
    monkeypatch.setattr(torch.export, "save", lambda program, f, **k: seen.append(f) or f.write(b"PK"))
    with pytest.raises(OSError, match="full"):
        exporter.export(model, meta, "torch-export", tmp_path / "m.pt2", batch=1, with_nms=True)
    assert not isinstance(seen[0], (str, Path)) and not (tmp_path / "m.pt2").exists()


def test_a_planted_commit_note_cannot_move_a_file_over_another_output(tmp_path):
    """A note beside eval's detections that renames a planted temporary over best.pt (the run's weights):
    a note may only finish the outputs being written, so it is refused and best.pt stays."""
    import json

    from ssdfast.machinery.outputs import finish_interrupted

    (tmp_path / "best.pt").write_bytes(b"the weights")
    (tmp_path / ".best.pt.aaaaaaaa.tmp").write_bytes(b"planted")
    note = tmp_path / ".detections_val.json.commit.json"
    note.write_text(json.dumps([[".best.pt.aaaaaaaa.tmp", "best.pt"]]))
    outputs = [tmp_path / "detections_val.json", tmp_path / "detections_val.metrics.json"]
    with pytest.raises(ValueError, match=f"{note} is not a commit note ssdfast wrote: remove it"):
        finish_interrupted(outputs)
    assert (tmp_path / "best.pt").read_bytes() == b"the weights"
    # the oracle: a note naming this run's own outputs is carried out
    (tmp_path / ".detections_val.json.bbbbbbbb.tmp").write_text("[]")
    note.write_text(json.dumps([[".detections_val.json.bbbbbbbb.tmp", "detections_val.json"]]))
    finish_interrupted(outputs)
    assert (tmp_path / "detections_val.json").read_text() == "[]" and not note.exists()


@pytest.mark.slow
def test_a_new_run_never_replaces_a_users_args_json(synthetic_coco, tmp_path):
    """A fresh run (no last.pt) in a folder holding an args.json ssdfast did not write refuses in one line and
    leaves it; one that ssdfast wrote (a run killed before its first checkpoint) is replaced as before."""
    from conftest import train_args

    from ssdfast.machinery.outputs import write_json_atomic

    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "args.json").write_text('{"mine": true}')
    args = train_args(synthetic_coco, folder, 1, "--iters-per-epoch", 1, "--eval-every", 0)
    result = tool("train", *args, check=False)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 1 and errors == [
        f"error: {folder / 'args.json'} is a file ssdfast did not write (or one edited since): a new run would "
        "replace it; give another --save-folder"
    ], result.stderr[-2000:]
    assert (folder / "args.json").read_text() == '{"mine": true}' and not (folder / "last.pt").exists()
    write_json_atomic(folder / "args.json", {"epochs": 1}, claim=True)  # as a killed run of ssdfast left it
    tool("train", *args)
    assert json.loads((folder / "args.json").read_text())["epochs"] == 1 and (folder / "last.pt").exists()
