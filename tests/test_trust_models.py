"""A model file never runs code and is never used corrupted (issue 29, kind 1): what torch loads is what
was checked (a zip that two readers read differently is refused or loaded as checked), checkpoints carry
a sha256 of their weights and every zip checkpoint passes its CRCs, and the metadata is checked key by
key against the weights. The hostile .pt2 files (an opaque constant whose pickle runs code) are in
test_trust_export.py, beside the exported model they are made from.

The oracles: Python's zipfile (testzip: which entry's CRC fails), torch's own unguarded readers
(torch.load, torch._C.PyTorchFileReader: that a crafted file really reads two ways), and the weights
that were saved.
"""

import io
import os
import struct
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import tool, train_args

import ssdfast
from ssdfast.inference import load_detector
from ssdfast.machinery.checkpoint import DIGEST_KEY, CheckpointError, load_checkpoint, save_checkpoint
from ssdfast.models import build_model
from ssdfast.training.finetune import load_source, transfer_weights
from ssdfast.training.state import resume_training, training_state

META = {
    "model_name": "ssdlite300_mobilenetv2",
    "num_classes": 3,
    "category_names": ["a", "b", "c"],
    "category_ids": [1, 2, 3],
}


# ------------------------------------------------------------------------------ hostile zip archives
def rezip(data: bytes, change=lambda name, payload: payload, add=(), comment=0) -> bytes:
    """The zip `data` written again by zipfile (fresh CRCs), each entry's bytes through change(name inside the
    root, bytes); `add`: (name inside the root, bytes) appended; `comment`: bytes of comment on the first
    entry (it lengthens the central directory, not the entries)."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as zin, zipfile.ZipFile(out, "w") as zout:
        names = zin.namelist()
        root = names[0].split("/")[0]
        for i, name in enumerate(names):
            info = zipfile.ZipInfo(name)
            info.comment = b"x" * comment if i == 0 else b""
            zout.writestr(info, change(name.split("/", 1)[1], zin.read(name)))
        for inner, payload in add:
            zout.writestr(f"{root}/{inner}", payload)
    return out.getvalue()


def end_record(data: bytes) -> tuple[int, int, int]:
    """(entries, central directory size, central directory offset) from the zip's end record."""
    at = data.rfind(b"PK\x05\x06")
    _, _, _, _, count, size, offset, _ = struct.unpack("<4s4H2LH", data[at : at + 22])
    return count, size, offset


def two_directories(clean: bytes, hostile: bytes) -> bytes:
    """One file that Python's zipfile reads as the archive `clean` and torch's miniz as `hostile`.

    Layout: hostile's entries and central directory, then clean's entries and central directory, then one
    end record giving hostile's entry count and directory offset but clean's directory size. zipfile takes
    the directory that ends at the end record and shifts every offset by what it finds before it (clean's
    offsets are written so that the shift lands on clean's entries); miniz follows the offset."""
    hostile_size = end_record(hostile)[1]
    clean = rezip(clean, comment=max(0, hostile_size - end_record(clean)[1]) + 8)
    count, hostile_size, hostile_offset = end_record(hostile)
    _, clean_size, clean_offset = end_record(clean)
    shift = hostile_offset - clean_offset
    assert shift >= 0, "the hostile archive's entries must take at least the clean one's space"
    directory = bytearray(clean[clean_offset : clean_offset + clean_size])
    at = 0
    while at < len(directory):  # each central directory header: 46 bytes, then name, extra, comment
        name, extra, comment = struct.unpack("<3H", directory[at + 28 : at + 34])
        (local,) = struct.unpack("<L", directory[at + 42 : at + 46])
        struct.pack_into("<L", directory, at + 42, local + shift)
        at += 46 + name + extra + comment
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, count, count, len(directory), hostile_offset, 0)
    return hostile[: hostile_offset + hostile_size] + clean[:clean_offset] + bytes(directory) + end


def with_odd_name(data: bytes) -> bytes:
    """`data` with one more entry whose name is stored in the zip's old code page (cp437, no UTF-8 flag): a
    valid zip, whose name zipfile decodes as cp437 and torch's reader as UTF-8 (it cannot)."""
    return rezip(data, add=[("extra/zz", b"")]).replace(b"extra/zz", b"extra/\x82z")


def torch_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


# --------------------------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def weights():
    torch.manual_seed(0)
    return build_model("ssdlite", num_classes=3).state_dict()


@pytest.fixture
def saved(tmp_path, weights):
    """A checkpoint as ssdfast writes it (with its weights' sha256)."""
    path = tmp_path / "model.pt"
    save_checkpoint(path, {"model": weights, **META, "epoch": 4})
    return path


def largest_tensor_entry(data: bytes) -> zipfile.ZipInfo:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)


def flip_in_place(path: Path) -> str:
    """Flip one byte in the middle of the largest tensor's bytes, as a bad disk would (its CRC now fails)
    -> the entry's name."""
    data = bytearray(path.read_bytes())
    entry = largest_tensor_entry(bytes(data))
    name_length, extra_length = struct.unpack("<2H", data[entry.header_offset + 26 : entry.header_offset + 30])
    data[entry.header_offset + 30 + name_length + extra_length + entry.file_size // 2] ^= 0x40
    path.write_bytes(bytes(data))
    return entry.filename


def flip_with_a_fresh_crc(path: Path) -> None:
    """The same byte flipped, but the archive written again with CRCs of the flipped bytes: only the weights'
    sha256 can tell."""
    data = path.read_bytes()
    target = largest_tensor_entry(data).filename.split("/", 1)[1]

    def flip(name, payload):
        if name != target:
            return payload
        payload = bytearray(payload)
        payload[len(payload) // 2] ^= 0x40
        return bytes(payload)

    path.write_bytes(rezip(data, flip))


def test_a_checkpoint_carries_the_sha256_of_its_weights_and_loads(saved, weights):
    ckpt = load_checkpoint(saved)
    assert len(ckpt[DIGEST_KEY]) == 64
    for key, tensor in weights.items():
        assert torch.equal(ckpt["model"][key], tensor), key
    detector = ssdfast.load(saved)
    assert detector.names == META["category_names"]


@pytest.mark.parametrize("digest", [True, False], ids=["ssdfast", "without_digest"])
def test_a_flipped_byte_inside_a_weight_is_refused(tmp_path, weights, digest):
    path = tmp_path / "model.pt"
    if digest:
        save_checkpoint(path, {"model": weights, **META})
    else:  # the older implementation's and NVIDIA's files: torch.save, no digest
        torch.save({"model_state_dict": weights, "epoch": 3}, path)
    entry = flip_in_place(path)
    assert zipfile.ZipFile(path).testzip() == entry  # the oracle: the entry's CRC fails
    for load in (load_checkpoint, ssdfast.load, load_detector):
        with pytest.raises(CheckpointError, match=f"{path}: its entry {entry} is corrupted"):
            load(path)


def test_backbone_weights_follow_the_model_file_rules(tmp_path, monkeypatch):
    """--backbone-weights is a model file too: a FIFO there is refused before it is opened (it would block the
    run forever), and a flipped byte inside a weight fails its zip CRC (torch.load alone uses the file)."""
    import torchvision

    fifo = tmp_path / "fifo.pth"
    os.mkfifo(fifo)
    with pytest.raises(CheckpointError, match=f"checkpoint is not a regular file: {fifo}"):
        build_model("ssdlite", backbone_weights=str(fifo))
    path = tmp_path / "mobilenet_v2.pth"
    torch.save(torchvision.models.mobilenet_v2().state_dict(), path)
    build_model("ssdlite", backbone_weights=str(path))  # a genuine file loads
    entry = flip_in_place(path)
    assert zipfile.ZipFile(path).testzip() == entry  # the oracle: the entry's CRC fails
    torch.load(path, weights_only=True)  # and torch alone would use it
    with pytest.raises(ValueError, match=f"cannot read the backbone weights {path}: .*its entry {entry} is corrupted"):
        build_model("ssdlite", backbone_weights=str(path))


def test_a_weight_rewritten_with_a_fresh_crc_fails_the_digest(saved):
    flip_with_a_fresh_crc(saved)
    assert zipfile.ZipFile(saved).testzip() is None  # every CRC holds: the zip cannot tell
    for load in (load_checkpoint, ssdfast.load):
        with pytest.raises(CheckpointError, match=f"{saved} is corrupted: its weights do not match the sha256"):
            load(saved)


def test_weights_edited_under_the_old_digest_are_refused(saved, tmp_path):
    ckpt = torch.load(saved, weights_only=True)
    edited = tmp_path / "edited.pt"
    torch.save({**ckpt, "epoch": 9}, edited)  # metadata edited: the weights still match
    assert load_checkpoint(edited)["epoch"] == 9
    ckpt["model"]["conf.0.3.bias"] = ckpt["model"]["conf.0.3.bias"] + 1
    torch.save(ckpt, edited)
    with pytest.raises(CheckpointError, match="do not match the sha256"):
        load_checkpoint(edited)


def test_torch_loads_the_checkpoint_that_was_checked(tmp_path, weights):
    """Same entry names in both readings, other bytes in torch's: torch.load of the file gives the hidden
    weights; ssdfast's loader gives the weights whose CRCs it checked."""
    hidden = {key: torch.full_like(value, 7) if value.is_floating_point() else value for key, value in weights.items()}
    path = tmp_path / "two.pt"
    path.write_bytes(two_directories(torch_bytes({"model": weights}), torch_bytes({"model": hidden})))
    assert zipfile.ZipFile(path).testzip() is None
    unguarded = torch.load(path, weights_only=True)["model"]  # the oracle: torch alone reads the other archive
    assert torch.equal(unguarded["conf.0.3.bias"], hidden["conf.0.3.bias"])
    loaded = load_checkpoint(path)["model"]
    for key, tensor in weights.items():
        assert torch.equal(loaded[key], tensor), key


@pytest.mark.parametrize("how", ["two_directories", "odd_name", "data_before"])
def test_a_checkpoint_that_torch_reads_otherwise_is_refused(tmp_path, weights, how):
    clean = torch_bytes({"model": weights, **META})
    data = {
        "two_directories": lambda: two_directories(clean, rezip(clean, add=[("data/hidden", b"hidden")])),
        "odd_name": lambda: with_odd_name(clean),
        "data_before": lambda: b"\0" * 64 + clean,
    }[how]()
    path = tmp_path / "odd.pt"
    path.write_bytes(data)
    assert zipfile.ZipFile(path).testzip() is None  # a valid zip to Python's reader
    try:  # the oracle: torch's reader lists other entries, or cannot read it
        torch_records = torch._C.PyTorchFileReader(str(path)).get_all_records()
    except Exception:
        torch_records = None
    assert torch_records != [name.split("/", 1)[1] for name in zipfile.ZipFile(path).namelist()]
    with pytest.raises(CheckpointError, match=f"{path} is refused: Python's zip reader .* read different archives"):
        ssdfast.load(path)


def test_a_checkpoint_in_torch_legacy_format_still_loads(tmp_path, weights):
    path = tmp_path / "legacy.pt"
    torch.save({"model": weights, **META}, path, _use_new_zipfile_serialization=False)
    assert not zipfile.is_zipfile(path)
    assert torch.equal(load_checkpoint(path)["model"]["conf.0.3.bias"], weights["conf.0.3.bias"])


# ---------------------------------------------------------------------------------------- metadata
CRAFTED = [
    ("category_names", {"category_names": ["a"]}),  # IndexError in detect before
    ("num_classes", {"num_classes": "3"}),  # TypeError before
    ("num_classes", {"num_classes": 10**12}),  # tried to allocate before
    ("num_classes", {"num_classes": 4, "category_names": list("abcd"), "category_ids": [1, 2, 3, 4]}),
    ("category_names", {"category_names": ["a" * 1000, "b", "c"]}),
    ("category_names", {"category_names": "abc"}),
    ("category_ids", {"category_ids": [1, 1, 2]}),
    ("model_name", {"model_name": ["ssd"]}),
    ("model_name", {"model_name": "yolo"}),
    ("epoch", {"epoch": "4"}),
]


@pytest.mark.parametrize("key,change", CRAFTED, ids=[f"{k}-{i}" for i, (k, _) in enumerate(CRAFTED)])
def test_crafted_checkpoint_metadata_is_one_error_naming_the_key(tmp_path, weights, key, change):
    path = tmp_path / "crafted.pt"
    save_checkpoint(path, {"model": weights, **META, **change})  # a valid digest: the metadata is what is wrong
    for load in (ssdfast.load, load_detector, load_source):
        with pytest.raises(CheckpointError, match=f"{path}: its metadata key '{key}' must be"):
            load(path)


def test_fine_tuning_from_weights_whose_names_do_not_fit_is_one_error(tmp_path):
    six = build_model("ssdlite", num_classes=6).state_dict()
    path = tmp_path / "six.pt"
    save_checkpoint(
        path, {"model": six, "model_name": "ssdlite300_mobilenetv2", "category_names": [f"c{i}" for i in range(200)]}
    )
    with pytest.raises(CheckpointError, match="'category_names' must be num_classes strings"):
        load_source(path)
    target = build_model("ssdlite", num_classes=3)
    with pytest.raises(CheckpointError, match="rows in the weights for 200 category names"):
        transfer_weights(target, six, [f"c{i}" for i in range(200)], ["a", "b", "c"])


# -------------------------------------------------------------------------------------------- resume
def test_resume_checks_the_digest_and_the_resumed_checkpoint_carries_one(tmp_path, weights):
    def fresh():
        model = build_model("ssdlite", num_classes=3)
        return model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    model, optimizer = fresh()
    model.load_state_dict(weights)
    for parameter in model.parameters():
        parameter.grad = torch.full_like(parameter, 1e-3)
    optimizer.step()  # momentum buffers: an optimizer state to resume
    fields = dict(model_name=META["model_name"], category_ids=[1, 2, 3], category_names=["a", "b", "c"], best_ap=-1.0)
    path = tmp_path / "last.pt"
    save_checkpoint(path, training_state(model, optimizer, None, epoch=0, args={}, **fields))
    resumed, resumed_optimizer = fresh()
    resume_training(
        path, resumed, resumed_optimizer, None, model_name=META["model_name"], category_names=["a", "b", "c"]
    )
    save_checkpoint(path, training_state(resumed, resumed_optimizer, None, epoch=1, args={}, **fields))
    assert load_checkpoint(path)["epoch"] == 1  # the resumed run's last.pt verifies
    flip_with_a_fresh_crc(path)
    with pytest.raises(CheckpointError, match="do not match the sha256"):
        resume_training(path, *fresh(), None, model_name=META["model_name"], category_names=["a", "b", "c"])


# --------------------------------------------------------------------------------------------- tools
@pytest.fixture(scope="module")
def bad_checkpoints(tmp_path_factory, weights):
    """{kind: (path, what the error line says)} of refused checkpoints for the tools."""
    folder = tmp_path_factory.mktemp("bad")
    files = {}
    for kind in ("crc", "digest", "metadata", "two_readings"):
        path = folder / f"{kind}.pt"
        save_checkpoint(path, {"model": weights, **META, **({"num_classes": "3"} if kind == "metadata" else {})})
        if kind == "crc":
            files[kind] = path, f"{path}: its entry {flip_in_place(path)} is corrupted"
        elif kind == "digest":
            flip_with_a_fresh_crc(path)
            files[kind] = path, f"{path} is corrupted: its weights do not match"
        elif kind == "metadata":
            files[kind] = path, f"{path}: its metadata key 'num_classes' must be"
        else:
            data = path.read_bytes()
            path.write_bytes(two_directories(data, rezip(data, add=[("data/hidden", b"hidden")])))
            files[kind] = path, f"{path} is refused"
    return files


def one_error_line(run) -> str:
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert run.returncode == 1 and len(errors) == 1 and "Traceback" not in run.stderr, run.stderr[-2000:]
    return errors[0]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["crc", "digest", "metadata", "two_readings"])
@pytest.mark.parametrize("name", ["detect", "eval"])
def test_the_tools_refuse_a_bad_checkpoint_in_one_line(bad_checkpoints, synthetic_coco, tmp_path, name, kind):
    path, says = bad_checkpoints[kind]
    image = min((synthetic_coco / "val2017").glob("*.jpg"))
    args = {
        "eval": ["--data-path", synthetic_coco, "--num-workers", 0, "--output", tmp_path / "d.json"],
        "detect": ["--input", image, "--output", tmp_path / "o.jpg"],
    }[name]
    assert says in one_error_line(tool(name, "--weights", path, *args, check=False))
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_train_refuses_bad_weights_and_a_bad_last_pt_and_resumes_with_a_digest(
    bad_checkpoints, synthetic_coco, tmp_path
):
    path, says = bad_checkpoints["digest"]
    fine_tune = tool(
        "train", *train_args(synthetic_coco, tmp_path / "ft", 1, "--weights", path, "--eval-every", 0), check=False
    )
    assert says in one_error_line(fine_tune)
    run = tmp_path / "run"
    tool("train", *train_args(synthetic_coco, run, 1, "--eval-every", 0))
    first = load_checkpoint(run / "last.pt")[DIGEST_KEY]
    tool("train", *train_args(synthetic_coco, run, 2, "--eval-every", 0))  # resumes at epoch 1
    resumed = load_checkpoint(run / "last.pt")  # verifies: the resumed run wrote a digest of its weights
    assert resumed["epoch"] == 1 and resumed[DIGEST_KEY] != first
    flip_with_a_fresh_crc(run / "last.pt")
    rerun = tool("train", *train_args(synthetic_coco, run, 3, "--eval-every", 0), check=False)
    assert f"{run / 'last.pt'} is corrupted" in one_error_line(rerun)


@pytest.mark.parametrize("value", [7, "w", None], ids=["int", "str", "none"])
def test_a_weight_that_is_no_tensor_is_a_named_error(tmp_path, weights, value):
    """A file without a digest (torch.save) whose state dict holds a plain value for a weight: one error
    naming the file and the key, not an AttributeError from inside the load."""
    key = sorted(weights)[0]
    path = tmp_path / "model.pt"
    torch.save({"model_state_dict": {**weights, key: value}, "epoch": 3}, path)
    for load in (ssdfast.load, load_detector):
        with pytest.raises(CheckpointError, match=f"{path}.*wrong shapes: {key}"):
            load(path)


@pytest.mark.parametrize(
    "ckpt, key",
    [
        ({"position": "x", "epoch": 0}, "position"),
        ({"position": {"epoch": "1", "iteration": 2}}, "position"),
        ({"position": {"epoch": 1, "iteration": -2}}, "position"),
        ({"position": {"epoch": 1}}, "position"),
        ({"position": None, "epoch": "3"}, "epoch"),
        ({"epoch": 2.5}, "epoch"),
    ],
)
def test_a_resume_position_is_checked_before_it_is_counted_with(ckpt, key):
    from ssdfast.training.state import resume_position

    with pytest.raises(CheckpointError, match=f"last.pt: its '{key}' must be"):
        resume_position("last.pt", ckpt)
    good = {"epoch": 1, "iteration": 4, "world": 2}
    assert resume_position("last.pt", {"position": good, "epoch": 0}) == good
    assert resume_position("last.pt", {"position": None, "epoch": -1}) is None


def test_a_large_file_that_is_no_checkpoint_is_refused_from_its_first_bytes(tmp_path):
    """A 2 GB sparse file of zeros as --weights: refused from its first and last bytes, before it is read
    (peak memory of a subprocess, the oracle: reading it whole would take 2 GB)."""
    import subprocess
    import sys

    path = tmp_path / "big.pt"
    with open(path, "wb") as file:
        file.truncate(2 << 30)
    code = (
        "import sys; from ssdfast.machinery.checkpoint import CheckpointError, load_checkpoint\n"
        "try:\n    load_checkpoint(sys.argv[1])\nexcept CheckpointError as error:\n    print(error)\n"
        # VmHWM: this process's own peak (ru_maxrss would carry the parent's across fork and exec)
        "print(next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')) // 1024)"
    )
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True).stdout
    message, peak_mb = out.strip().splitlines()
    assert message.startswith(f"cannot read checkpoint {path}: not a PyTorch checkpoint"), message
    assert int(peak_mb) < 1500, peak_mb  # the interpreter and PyTorch, not the file
