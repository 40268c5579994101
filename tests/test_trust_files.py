"""No symlink leads out of a dataset, no special file is opened, no small file eats the machine (issue 29, kinds 3, 4).

The containment rule (ssdfast.data.dataset_files) is tried for every file kind of every format: a file moved
out of the dataset and symlinked back is refused (one line naming it) or dropped (a warning naming it), and
read only with --allow-outside-paths, where the oracle is the untouched set (the same records); a FIFO in its
place is neither waited on nor read. Images are capped in bytes before a byte is read (a 5 GB sparse file,
peak memory measured in a subprocess); YAML aliases, huge sizes and ids, non-UTF-8 lists and overlong names
are each one named line or a counted drop; messages quoting user data stay short.
"""

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from conftest import ROOT, tool, train_args
from test_bad_input import fake_weights
from test_datasets import write_voc_from_coco, write_yolo_from_coco

from ssdfast.data import CocoDetection, write_synthetic_coco
from ssdfast.data.coco import decode_image, read_image
from ssdfast.data.formats import resolve_source
from ssdfast.data.gpu_pipeline import read_payload
from ssdfast.data.image_files import DEFAULT_MAX_IMAGE_BYTES
from ssdfast.data.validate import MAX_IMAGE_SIDE
from ssdfast.data.voc import read_voc
from ssdfast.data.yolo import read_yolo
from ssdfast.machinery.user_errors import MAX_SHOWN, shown
from ssdfast.training.lock import SaveFolderLock

B = "000000000002"  # the second training image of the tiny set: the one each attack aims at
SPARSE = 5 * 2**30


@contextlib.contextmanager
def no_hang(seconds: int = 20):
    """Fail (instead of hanging the suite) when the block blocks, e.g. an open() waiting on a FIFO."""

    def expire(*_):
        raise TimeoutError(f"still blocked after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def tiny_set(data_format: str, tmp_path: Path) -> Path:
    """Two training images (B the second) in `data_format`; "yolo-list": YOLO with a train.txt list file."""
    coco = write_synthetic_coco(tmp_path / "coco", num_train=2, num_val=1, seed=3)
    if data_format == "coco":
        return coco
    if data_format == "voc":
        return write_voc_from_coco(coco, tmp_path / "voc")
    yolo = write_yolo_from_coco(coco, tmp_path / "yolo")
    if data_format == "yolo-list":
        listed = sorted(p.relative_to(yolo).as_posix() for p in (yolo / "images" / "train").iterdir())
        (yolo / "train.txt").write_text("\n".join(listed) + "\n")
        (yolo / "data.yaml").write_text((yolo / "data.yaml").read_text().replace("images/train", "train.txt", 1))
    return yolo


def voc_names(root: Path) -> list[str]:
    return [c["name"] for c in read_voc(root, "train").annotations["categories"]]


def load(root: Path, allow: bool = False) -> tuple[CocoDetection, str]:
    """The training split as the tools load it (-> dataset, every warning's text)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        source = resolve_source(root, "train", allow_outside_paths=allow)
        data = CocoDetection(split="train", train=False, source=source, allow_outside_paths=allow)
    return data, " ".join(str(w.message) for w in caught)


def records(data: CocoDetection) -> dict[str, tuple]:
    return {Path(r.file_name).stem: (r.boxes.round(5).tolist(), r.labels.tolist()) for r in data.records}


# (format, the file attacked, relative to the dataset folder, what becomes of it)
FILE_KINDS = [
    ("coco", "annotations/instances_train2017.json", "refused"),
    ("coco", f"train2017/{B}.jpg", "dropped"),
    ("voc", f"Annotations/{B}.xml", "dropped"),
    ("voc", "ImageSets/Main/train.txt", "refused"),
    ("voc", f"JPEGImages/{B}.jpg", "dropped"),
    ("yolo", "images/train", "refused"),  # the folder data.yaml's train: names
    ("yolo", f"images/train/{B}.jpg", "dropped"),
    ("yolo", f"labels/train/{B}.txt", "dropped"),
    ("yolo-list", "train.txt", "refused"),  # the list file data.yaml's train: names
    ("yolo-list", f"images/train/{B}.jpg", "dropped"),  # an image the list names
]


@pytest.mark.parametrize("attack", ["symlink out", "fifo"])
@pytest.mark.parametrize("data_format, name, outcome", FILE_KINDS)
def test_every_file_a_dataset_names_stays_inside_and_is_a_regular_file(tmp_path, data_format, name, outcome, attack):
    root = tiny_set(data_format, tmp_path)
    clean = records(load(root)[0])
    assert sorted(clean) == ["000000000001", B]
    target = root / name
    if attack == "symlink out":
        outside = tmp_path / "outside" / target.name
        outside.parent.mkdir()
        shutil.move(target, outside)
        target.symlink_to(outside, target_is_directory=outside.is_dir())
    else:
        shutil.rmtree(target) if target.is_dir() else target.unlink()
        os.mkfifo(target)
    reason = "outside" if attack == "symlink out" else "not a regular file"
    with no_hang():
        if outcome == "refused":
            with pytest.raises(ValueError) as refused:
                load(root)
            message = str(refused.value)
            assert str(target) in message and reason in message and "\n" not in message, message
        else:
            data, warned = load(root)
            assert records(data) == {k: v for k, v in clean.items() if k != B}  # never read: B's truth is gone
            assert target.name in warned, warned  # the warning names the file left out
    if attack == "symlink out":  # read when the user says so: exactly what the untouched set gives
        assert records(load(root, allow=True)[0]) == clean


@pytest.mark.parametrize("data_format, name", [("voc", f"Annotations/{B}.xml"), ("yolo", f"labels/train/{B}.txt")])
def test_one_images_annotations_over_their_size_limit_are_dropped_unread(tmp_path, data_format, name):
    """A label file or an XML holds one image's boxes: one larger than MAX_RECORD_BYTES (here sparse, so
    reading it would cost the memory, not the disk) is dropped with a warning naming it, before it is read."""
    from ssdfast.data.dataset_files import MAX_RECORD_BYTES

    root = tiny_set(data_format, tmp_path)
    clean = records(load(root)[0])
    with open(root / name, "r+b") as file:
        file.truncate(MAX_RECORD_BYTES + 1)
    data, warned = load(root)
    assert records(data) == {k: v for k, v in clean.items() if k != B}
    assert f"{B}" in warned and "over the size limit" in warned, warned


@pytest.mark.slow
def test_tools_refuse_a_symlinked_annotation_file_in_one_line_and_read_it_when_allowed(tmp_path):
    root = tiny_set("voc", tmp_path)
    listing = root / "ImageSets" / "Main" / "val.txt"
    shutil.move(listing, tmp_path / "val.txt")
    listing.symlink_to(tmp_path / "val.txt")
    weights = fake_weights(tmp_path / "w.pt", voc_names(root))
    run = ("--data-path", root, "--weights", weights, "--num-workers", 0, "--output", tmp_path / "e" / "d.json")
    refused = tool("eval", *run, check=False)
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1, refused.stderr
    assert refused.stderr.startswith(f"error: {listing}: outside the dataset folder")
    tool("eval", *run, "--allow-outside-paths")
    trained = tool("train", *train_args(root, tmp_path / "run", 1), check=False)
    error = trained.stderr.strip().splitlines()[-1]  # after a warning: 2 training images for a batch of 4
    assert trained.returncode == 1 and error.startswith(f"error: {listing}: outside the dataset folder"), error
    assert "Traceback" not in trained.stderr and not (tmp_path / "run" / "last.pt").exists()


# ---------------------------------------------------------------- train.lock is a regular file of its own
def plant(lock: Path, kind: str, victim: Path) -> None:
    if kind == "symlink":
        lock.symlink_to(victim)
    elif kind == "dangling symlink":
        lock.symlink_to(victim.with_name("not_there"))
    elif kind == "directory":
        lock.mkdir()
    elif kind == "fifo":
        os.mkfifo(lock)
    elif kind == "hard link":
        os.link(victim, lock)


@pytest.mark.parametrize("kind", ["symlink", "dangling symlink", "directory", "fifo", "hard link"])
def test_a_lock_that_is_not_a_regular_file_of_its_own_is_refused_and_nothing_is_written(tmp_path, kind):
    victim = tmp_path / "precious.txt"
    victim.write_text("precious")
    folder = tmp_path / "run"
    folder.mkdir()
    plant(folder / "train.lock", kind, victim)
    with no_hang(), pytest.raises(ValueError, match=f"^{folder / 'train.lock'}: .*not a lock file a training wrote"):
        SaveFolderLock(folder).acquire(say=pytest.fail)
    assert victim.read_text() == "precious" and not victim.with_name("not_there").exists()
    assert os.path.lexists(folder / "train.lock")  # left for the user to look at


def test_a_stale_regular_lock_is_still_taken_over(tmp_path):
    lock = tmp_path / "train.lock"
    lock.write_text(json.dumps({"pid": 1 << 22, "host": socket.gethostname(), "since": "earlier"}))
    said = []
    with SaveFolderLock(tmp_path).acquire(say=said.append):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert said and "taking over" in said[0] and not lock.exists()


@pytest.mark.slow
def test_train_refuses_a_lock_that_is_a_symlink_in_one_line(synthetic_coco, tmp_path, kind="symlink"):
    victim = tmp_path / "precious.txt"
    victim.write_text("precious")
    (tmp_path / "run").mkdir()
    plant(tmp_path / "run" / "train.lock", kind, victim)
    result = tool("train", *train_args(synthetic_coco, tmp_path / "run", 1), check=False)
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"error: {tmp_path / 'run' / 'train.lock'}: a {kind}")
    assert victim.read_text() == "precious"


# ---------------------------------------------------------------- image files: size first, then the header
def sparse(path: Path, size: int = SPARSE) -> Path:
    """A file of `size` bytes that costs no disk (a hole); a JPEG's first bytes, so it looks like one."""
    with open(path, "wb") as f:
        f.write(b"\xff\xd8\xff\xe0")
        f.truncate(size)
    return path


PEAK = """
import resource
import ssdfast
from ssdfast.data.coco import decode_image

model = ssdfast.load({weights!r})
for name, call in (("decode_image", lambda: decode_image({big!r})), ("predict", lambda: model.predict({big!r}))):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        call()
    except ValueError as error:
        print(name, error)
    print(name, "peak growth KiB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
"""


def test_a_sparse_5gb_image_is_refused_by_its_size_by_every_reader(tmp_path):
    big = sparse(tmp_path / "big.jpg")
    limit = f"over the size limit ({SPARSE} bytes; --max-image-bytes is {DEFAULT_MAX_IMAGE_BYTES})"
    with pytest.raises(ValueError, match=f"^{big}: {re.escape(limit)}$"):
        decode_image(big, max_pixels=10**8)
    # Every reader goes through it: the datasets (read_image), the GPU and DALI paths' workers (read_payload).
    assert read_image(big) is None and read_payload(big) == {"unreadable": str(big)}
    small = sparse(tmp_path / "small.jpg", 1000)
    with pytest.raises(ValueError, match=r"small.jpg: over the size limit \(1000 bytes; --max-image-bytes is 999\)"):
        decode_image(small, max_bytes=999)
    with pytest.raises(ValueError, match="small.jpg: not an image"):  # under the limit: the header decides
        decode_image(small, max_bytes=1000)


@pytest.mark.slow
def test_reading_a_sparse_5gb_image_keeps_the_peak_memory_small(tmp_path):
    """In a fresh interpreter, for decode_image and the API (ssdfast.load(...).predict(path))."""
    big = sparse(tmp_path / "big.jpg")
    weights = fake_weights(tmp_path / "w.pt", ["a", "b"])
    out = subprocess.run(
        [sys.executable, "-c", PEAK.format(weights=str(weights), big=str(big))],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines() if "peak growth" not in line)
    growth = {line.split()[0]: int(line.split()[-1]) for line in out.stdout.splitlines() if "peak growth" in line}
    assert (
        lines["decode_image"]
        == f"{big}: over the size limit ({SPARSE} bytes; --max-image-bytes is {DEFAULT_MAX_IMAGE_BYTES})"
    )
    assert lines["predict"].startswith(f"cannot read the image {big}: over the size limit ({SPARSE} bytes")
    assert growth["decode_image"] < 50 * 1024 and growth["predict"] < 100 * 1024, growth  # KiB, against 5 GiB


def test_datasets_skip_an_image_over_the_byte_cap(tmp_path):
    root = tiny_set("coco", tmp_path)
    sizes = [(root / "train2017" / f"{stem}.jpg").stat().st_size for stem in ("000000000001", B)]
    for cap in sorted(sizes):
        capped = CocoDetection(root, "train", train=False, max_image_bytes=cap)
        for index, size in enumerate(sizes):  # at the cap: read; one byte over: skipped, as unreadable
            path = root / "train2017" / capped.records[index].file_name
            assert ("image" in capped[index]) == (size <= cap) and (
                size <= cap or capped[index] == {"unreadable": str(path)}
            )


@pytest.mark.slow
def test_detect_skips_a_sparse_image_naming_it_and_the_limit(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(sorted((tiny_set("coco", tmp_path) / "train2017").iterdir())[0], folder / "good.jpg")
    big = sparse(folder / "big.jpg")
    weights = fake_weights(tmp_path / "w.pt", ["a", "b", "c"])
    result = tool(
        "detect", "--weights", weights, "--input", folder, "--output", tmp_path / "out", "--max-image-bytes", 10**6
    )
    assert f"warning: cannot read image {big}: over the size limit ({SPARSE} bytes; --max-image-bytes is 1000000)" in (
        result.stderr
    )
    assert sorted(json.loads((tmp_path / "out" / "detections.json").read_text())) == [str(folder / "good.jpg")]


# ---------------------------------------------------------------- small text files
def alias_bomb(levels: int = 9, width: int = 9) -> str:
    """The billion laughs in YAML: each level a list of `width` aliases of the one before (9**9 strings)."""
    lines = [f"l0: &l0 [{', '.join(['lol'] * width)}]"]
    for level in range(1, levels):
        lines.append(f"l{level}: &l{level} [{', '.join([f'*l{level - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


BOMB = alias_bomb()


@pytest.mark.parametrize(
    "text",
    [
        BOMB + "train: images/train\nval: images/val\nnames: [circle, square, triangle]\n",
        "train: images/train\nval: images/val\nnames: &n [circle, square, triangle]\nx: *n\n",
        "base: &b images/train\ntrain: *b\nval: images/val\nnames: [circle, square, triangle]\n",
    ],
    ids=["alias bomb", "anchor in names", "alias for a path"],
)
def test_yaml_anchors_and_aliases_are_refused_before_anything_expands(tmp_path, text):
    root = tiny_set("yolo", tmp_path)
    (root / "data.yaml").write_text(text)
    with no_hang(10), pytest.raises(ValueError, match="YAML anchors and aliases .* are not accepted") as refused:
        read_yolo(root, "train")
    assert str(root / "data.yaml") in str(refused.value) and len(str(refused.value)) < 2 * MAX_SHOWN + 200


@pytest.mark.slow
def test_train_refuses_a_yaml_bomb_in_one_short_line(tmp_path):
    root = tiny_set("yolo", tmp_path)
    (root / "data.yaml").write_text(BOMB + "train: images/train\nval: images/val\nnames: [a, b, c]\n")
    result = tool("train", *train_args(root, tmp_path / "run", 1), check=False)
    assert result.returncode == 1 and result.stderr.count("\n") == 1 and len(result.stderr) < 600, result.stderr
    assert "anchors and aliases" in result.stderr


def test_messages_quoting_user_data_are_capped(tmp_path):
    assert len(shown("x" * 10**6)) == MAX_SHOWN and "..." in shown("x" * 10**6)
    assert shown(["y" * 100] * 10**6).endswith("...") and len(shown(["y" * 100] * 10**6)) <= MAX_SHOWN
    assert shown("a\nb") == repr("a\nb")  # a newline in a name cannot forge a second line
    assert shown(10**5000) == "<a int too long to show>"
    root = tiny_set("yolo", tmp_path)
    huge_names = [["x" * 1000] * 1000, "square"]
    (root / "data.yaml").write_text(json.dumps({"train": "images/train", "val": "images/val", "names": huge_names}))
    with pytest.raises(ValueError, match="names entry 0") as refused:
        read_yolo(root, "train")
    assert len(str(refused.value)) < 2 * MAX_SHOWN + len(str(root)) + 100
    (root / "data.yaml").write_text(json.dumps({"train": "y" * 300, "val": "images/val", "names": ["a"]}))
    with pytest.raises(FileNotFoundError, match="not found") as missing:  # a name too long for the file system
        read_yolo(root, "train")
    assert len(str(missing.value)) < 2 * MAX_SHOWN + 2 * len(str(root)) + 100


@pytest.mark.parametrize("data_format", ["voc", "yolo-list"])
def test_a_list_file_that_is_not_utf8_is_named(tmp_path, data_format):
    root = tiny_set(data_format, tmp_path)
    listing = root / ("ImageSets/Main/train.txt" if data_format == "voc" else "train.txt")
    listing.write_bytes(b"\xff\xfe" + listing.read_bytes())
    with pytest.raises(ValueError, match=f"^{listing}: not UTF-8 text \\(byte 0xff at offset 0\\)$"):
        load(root)


@pytest.mark.parametrize("size", [10**30, float("inf"), MAX_IMAGE_SIDE + 1])
def test_image_sizes_out_of_range_are_dropped_and_named_at_load(tmp_path, size):
    coco = tiny_set("coco", tmp_path)
    ann = coco / "annotations" / "instances_train2017.json"
    data = json.loads(ann.read_text())
    data["images"][1]["width"] = size
    ann.write_text(json.dumps(data))
    voc = write_voc_from_coco(coco, tmp_path / "voc")  # <width>1000...0</width>, inf, 1048577
    for root in (coco, voc):
        kept, warned = load(root)
        if root == voc and size == float("inf"):  # VOC: a size that is not a finite number is read from the image
            assert sorted(records(kept)) == ["000000000001", B] and kept.records[1].width < 1000
            continue
        assert sorted(records(kept)) == ["000000000001"], root
        assert f"dropped 1 images wider or higher than {MAX_IMAGE_SIDE} pixels (ids 2 {B}.jpg)" in warned, warned


def test_ids_that_do_not_fit_64_bits_are_a_named_error(tmp_path):
    coco = tiny_set("coco", tmp_path)
    ann = coco / "annotations" / "instances_train2017.json"
    data = json.loads(ann.read_text())
    data["images"][1]["id"] = 10**30
    ann.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=f"{ann}: image #1: 'id' must be a 64-bit integer, got 1{'0' * 30}$"):
        load(coco)


def test_a_name_longer_than_the_file_system_allows_is_dropped_and_counted(tmp_path):
    coco = tiny_set("coco", tmp_path)
    ann = coco / "annotations" / "instances_train2017.json"
    data = json.loads(ann.read_text())
    data["images"][1]["file_name"] = "n" * 300 + ".jpg"
    ann.write_text(json.dumps(data))
    kept, warned = load(coco)
    assert sorted(records(kept)) == ["000000000001"]
    assert kept.dropped["image paths the file system cannot open"] == 1
    assert "1 image path(s) in" in warned and "cannot be opened" in warned and "nnn..." in warned


@pytest.mark.slow
def test_eval_of_a_voc_set_with_a_huge_width_names_the_record_and_goes_on(tmp_path):
    root = tiny_set("voc", tmp_path)
    val = (root / "ImageSets" / "Main" / "val.txt").read_text().split()[0]
    xml = root / "Annotations" / f"{val}.xml"
    xml.write_text(re.sub("<width>[0-9]+</width>", "<width>1e30</width>", xml.read_text()))
    weights = fake_weights(tmp_path / "w.pt", voc_names(root))
    result = tool(
        "eval",
        "--data-path",
        root,
        "--weights",
        weights,
        "--num-workers",
        0,
        "--output",
        tmp_path / "e" / "d.json",
        check=False,
    )
    assert "Traceback" not in result.stderr and "Overflow" not in result.stderr, result.stderr
    assert result.returncode == 1 and "no usable val images" in result.stderr, result.stderr
    assert f"1 images wider or higher than {MAX_IMAGE_SIDE} pixels" in result.stderr


def test_an_xml_entity_bomb_is_dropped_by_name(tmp_path):
    root = tiny_set("voc", tmp_path)
    entities = '<!ENTITY l0 "lol">' + "".join(f'<!ENTITY l{i} "{f"&l{i - 1};" * 10}">' for i in range(1, 10))
    xml = root / "Annotations" / f"{B}.xml"
    xml.write_text(f"<?xml version='1.0'?><!DOCTYPE annotation [{entities}]><annotation><filename>&l9;</filename>")
    with no_hang(10):
        kept, warned = load(root)
    assert sorted(records(kept)) == ["000000000001"] and f"{B}.xml: limit on input amplification" in warned, warned


# ---- JSON from a user's file: one reader, no RecursionError ----------------------------------------------

DEEP = "[" * 100_000  # 100 KB of JSON nested deeper than Python's stack: json.loads raises RecursionError


def test_every_json_of_a_users_file_is_parsed_by_parse_json():
    """The rule in one place: ssdfast parses JSON only through user_errors.parse_json (a ValueError for
    anything json cannot take), so every reader's `except ValueError` also covers nesting."""
    from ssdfast.machinery.user_errors import parse_json

    callers = [
        f"{path.relative_to(ROOT)}:{n}"
        for path in (ROOT / "ssdfast").rglob("*.py")
        if path.name != "user_errors.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"\bjson\.loads?\(", line)
    ]
    assert callers == []
    with pytest.raises(RecursionError):
        json.loads(DEEP)  # the oracle: what json alone does
    with pytest.raises(ValueError, match="nested too deeply"):
        parse_json(DEEP)


def test_deeply_nested_json_in_each_file_kind_is_a_named_error_or_ignored(tmp_path):
    """Readers of deeply nested JSON: a model's metadata, a COCO file and an eval commit note are named
    errors; the lock's holder and the output ledger (files ssdfast wrote that a user may have edited) are
    unreadable and ignored, as any other invalid JSON there."""
    from ssdfast.data.coco import read_coco_json
    from ssdfast.deploy.metadata import ExportMetadataError, validate
    from ssdfast.machinery.outputs import OWN_FILES, finish_interrupted, is_own

    with pytest.raises(ExportMetadataError, match="metadata is not valid JSON .*nested too deeply"):
        validate(tmp_path / "m.onnx", DEEP)
    (tmp_path / "instances_val2017.json").write_text(DEEP)
    with pytest.raises(ValueError, match="cannot parse COCO annotation file .*nested too deeply"):
        read_coco_json(tmp_path / "instances_val2017.json")
    (tmp_path / OWN_FILES).write_text(DEEP + "\n")
    (tmp_path / "d.json").write_text("[]")
    assert not is_own(tmp_path / "d.json")
    note = tmp_path / ".d.json.commit.json"
    note.write_text(DEEP)
    with pytest.raises(ValueError, match=f"{note} is not a commit note ssdfast wrote: remove it"):
        finish_interrupted([tmp_path / "d.json"])
    assert (tmp_path / "d.json").read_text() == "[]"  # nothing renamed
    lock = tmp_path / "train.lock"
    lock.write_text("[" * 4096)
    with SaveFolderLock(tmp_path).acquire(say=lambda line: None):  # a holder it cannot read: taken over
        assert json.loads(lock.read_text())["pid"] == os.getpid()
