"""Pretrained names (ssdfast/models/pretrained.py): the resolver, the cache, the sha256 check and the offline
error, against a file server on 127.0.0.1 (http.server in a thread) and torch.hub's own rules. Nothing
is downloaded from the internet: the cache is a temporary TORCH_HOME, and the real entries' URLs are only
ever reached through a fake download or a proxy that refuses every connection."""

import functools
import hashlib
import http.server
import threading
from dataclasses import replace

import pytest
import torch
from conftest import free_port, tool, train_args
from torchvision.models import MobileNet_V2_Weights, ResNet50_Weights, mobilenet_v2

import ssdfast
from ssdfast.inference import load_detector
from ssdfast.machinery.checkpoint import CheckpointError
from ssdfast.models import build_model, pretrained
from ssdfast.models.pretrained import PRETRAINED, cache_dir, resolve

NVIDIA_FILE = "nvidia_ssdpyt_amp_200703.pt"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty cache (TORCH_HOME in tmp_path); proxies bypassed, so requests to 127.0.0.1 stay local."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("NO_PROXY", "*")
    return tmp_path / "torch_home" / "ssdfast"


@pytest.fixture
def server(tmp_path):
    """A file server on 127.0.0.1 serving tmp_path/served -> (folder, base URL, list of requested paths)."""
    folder = tmp_path / "served"
    folder.mkdir()
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{httpd.server_address[1]}", requests
    httpd.shutdown()
    httpd.server_close()


def serve_mobilenet(folder, base, monkeypatch, sha256=None):
    """A torchvision mobilenet_v2 state dict served as torchvision names its files (name-<sha256 prefix>.pth),
    standing in for the real mobilenet_v2-imagenet entry -> (reference model, file name)."""
    torch.manual_seed(0)
    reference = mobilenet_v2(weights=None)
    staging = folder / "staging.pth"
    torch.save(reference.state_dict(), staging)
    digest = hashlib.sha256(staging.read_bytes()).hexdigest()
    name = f"mobilenet_v2-{digest[:8]}.pth"
    staging.rename(folder / name)
    entry = replace(
        PRETRAINED["mobilenet_v2-imagenet"], torchvision="", url=f"{base}/{name}", sha256=sha256 or digest[:8]
    )
    monkeypatch.setitem(PRETRAINED, "mobilenet_v2-imagenet", entry)
    return reference, name


def test_cache_dir_follows_torch_hub(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("TORCH_HOME", raising=False)
    for xdg in (None, str(tmp_path / "xdg")):  # torch.hub: $XDG_CACHE_HOME/torch, else ~/.cache/torch
        if xdg:
            monkeypatch.setenv("XDG_CACHE_HOME", xdg)
        else:
            monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
        torch_home = torch.hub.get_dir().removesuffix("/hub")
        assert cache_dir() == (tmp_path / torch_home).parent / "ssdfast"
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))  # torch.hub: $TORCH_HOME itself
    assert cache_dir() == tmp_path / "th" / "ssdfast" and torch.hub.get_dir() == str(tmp_path / "th" / "hub")


def test_torchvision_entries_take_url_and_hash_from_torchvision_enums():
    import re

    for name, weights in [("resnet50-imagenet", ResNet50_Weights), ("mobilenet_v2-imagenet", MobileNet_V2_Weights)]:
        url, sha256 = PRETRAINED[name].source()
        hub_prefix = re.compile(r"-([a-f0-9]*)\.").search(url.rsplit("/", 1)[-1]).group(1)  # torch.hub.HASH_REGEX
        assert url == weights.IMAGENET1K_V1.url and sha256 == hub_prefix and len(sha256) >= 8
    assert PRETRAINED["nvidia-ssd300-coco"].source()[1] is None  # NGC publishes none


def test_download_checks_sha256_caches_and_loads(cache, server, monkeypatch, capsys):
    folder, base, requests = server
    reference, name = serve_mobilenet(folder, base, monkeypatch)
    model = build_model("ssdlite", backbone_weights="imagenet")
    assert requests == [f"/{name}"] and sorted(p.name for p in cache.iterdir()) == [name]
    assert f"downloading mobilenet_v2-imagenet: {base}/{name}" in capsys.readouterr().err
    want = reference.features[3].conv[0][0].weight
    torch.testing.assert_close(model.feature_extractor.feature_extractor[3].conv[0][0].weight, want)
    again = build_model("ssdlite", backbone_weights="mobilenet_v2-imagenet")  # the cache: no second request
    assert len(requests) == 1
    torch.testing.assert_close(again.feature_extractor.feature_extractor[3].conv[0][0].weight, want)


def test_a_wrong_hash_refuses_and_keeps_nothing(cache, server, monkeypatch):
    folder, base, requests = server
    serve_mobilenet(folder, base, monkeypatch, sha256="0" * 64)
    with pytest.raises(
        CheckpointError, match=r"has sha256 [0-9a-f]{16}\.\.\., not the published 0{64}.*nothing was kept"
    ):
        build_model("ssdlite", backbone_weights="imagenet")
    assert requests and list(cache.iterdir()) == []  # no temporary left, nothing renamed in


def test_a_changed_file_in_the_cache_is_refused_not_loaded(cache, server, monkeypatch):
    folder, base, requests = server
    _, name = serve_mobilenet(folder, base, monkeypatch)
    cache.mkdir(parents=True)
    torch.save(mobilenet_v2(weights=None).state_dict(), cache / name)  # other weights under the published name
    with pytest.raises(CheckpointError, match=f"{cache / name} is not the published mobilenet_v2-imagenet.*delete it"):
        build_model("ssdlite", backbone_weights="imagenet")
    assert requests == [] and (cache / name).exists()  # neither downloaded over nor deleted: the user's file


def test_offline_is_one_line_naming_the_url_the_file_and_the_folder(cache, monkeypatch):
    closed = f"http://127.0.0.1:{free_port()}/mobilenet_v2-b0353104.pth"
    entry = replace(PRETRAINED["mobilenet_v2-imagenet"], torchvision="", url=closed, sha256="b0353104")
    monkeypatch.setitem(PRETRAINED, "mobilenet_v2-imagenet", entry)
    with pytest.raises(CheckpointError) as error:
        build_model("ssdlite", backbone_weights="imagenet")
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"cannot download {closed} (")
    assert "refused" in message.lower() and f"put it in {cache}/ as mobilenet_v2-b0353104.pth" in message
    assert "--backbone-weights none" in message
    assert list(cache.iterdir()) == []  # the temporary is gone


def test_the_real_entries_offline_name_their_own_url(cache, monkeypatch):
    def no_network(url, dest):
        dest.write_bytes(b"half a file")  # written before the failure: must not stay behind
        raise ConnectionError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(pretrained, "download", no_network)
    url = ResNet50_Weights.IMAGENET1K_V1.url
    with pytest.raises(CheckpointError, match=f"cannot download {url} .*put it in {cache}/ as {url.rsplit('/', 1)[1]}"):
        build_model("ssd", backbone_weights="imagenet")
    assert list(cache.iterdir()) == []


def test_a_name_without_a_published_sha256_is_never_downloaded(cache, monkeypatch, capsys):
    monkeypatch.setattr(pretrained, "download", lambda *a: pytest.fail("downloaded without a sha256 to check"))
    url = PRETRAINED["nvidia-ssd300-coco"].url
    with pytest.raises(
        CheckpointError, match=f"no sha256.*download {url} yourself and put it in {cache}/ as {NVIDIA_FILE}"
    ):
        ssdfast.load("nvidia-ssd300-coco", device="cpu")
    # Placed by hand (NVIDIA's layout: {"model": state dict with "module." prefixes}): used, never silently.
    torch.manual_seed(0)
    state = build_model("ssd", num_classes=80).state_dict()
    cache.mkdir(parents=True)
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}, "epoch": 64}, cache / NVIDIA_FILE)
    model, meta = load_detector("nvidia-ssd300-coco")
    assert f"note: nvidia-ssd300-coco: {cache / NVIDIA_FILE} is unverified" in capsys.readouterr().err
    assert meta["model_name"] == "ssd300_resnet50" and meta["category_names"][0] == "person"
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def test_an_unverified_file_is_used_only_with_a_note_giving_its_sha256(cache, capsys):
    cache.mkdir(parents=True)
    (cache / NVIDIA_FILE).write_bytes(b"placed by hand")
    for _ in range(2):  # every use, not only the first
        assert resolve("nvidia-ssd300-coco") == cache / NVIDIA_FILE
        err = capsys.readouterr().err
        assert "unverified" in err and hashlib.sha256(b"placed by hand").hexdigest() in err


def test_names_of_the_other_kind_or_model_are_refused(cache):
    with pytest.raises(
        CheckpointError, match="resnet50-imagenet are backbone weights .*pass them as --backbone-weights"
    ):
        load_detector("resnet50-imagenet")
    with pytest.raises(CheckpointError, match="nvidia-ssd300-coco are detector weights .*pass them as --weights"):
        build_model("ssd", backbone_weights="nvidia-ssd300-coco")
    with pytest.raises(CheckpointError, match="mobilenet_v2-imagenet .* does not fit ssd300_resnet50.*resnet50"):
        build_model("ssd", backbone_weights="mobilenet_v2-imagenet")
    assert not cache.exists()  # refused before anything was fetched


def test_an_existing_path_is_a_path_and_anything_else_is_left_to_the_loader(cache, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"model": build_model("ssdlite", num_classes=2).state_dict()}, "nvidia-ssd300-coco")
    assert resolve("nvidia-ssd300-coco") == "nvidia-ssd300-coco"  # the file here, not the name
    assert load_detector("nvidia-ssd300-coco")[1]["model_name"] == "ssdlite300_mobilenetv2"
    assert resolve("no-such-name") == "no-such-name"
    with pytest.raises(CheckpointError, match="checkpoint not found: no-such-name"):
        load_detector("no-such-name")


@pytest.mark.slow
def test_the_tools_give_one_line_offline_and_for_names_not_downloaded(synthetic_coco, tmp_path):
    # Every connection goes to a proxy that refuses it: offline, deterministically, without the internet.
    refused = f"http://127.0.0.1:{free_port()}"
    env = {"TORCH_HOME": str(tmp_path / "th"), "https_proxy": refused, "http_proxy": refused, "no_proxy": ""}
    url = MobileNet_V2_Weights.IMAGENET1K_V1.url
    run = tool(
        "train",
        *train_args(synthetic_coco, tmp_path / "run", 1, "--backbone-weights", "imagenet"),
        check=False,
        env=env,
    )
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr[-2000:]
    assert lines[-1].startswith(f"error: cannot download {url} (") and len(lines) <= 3  # + the "downloading" line
    assert f"put it in {tmp_path / 'th' / 'ssdfast'}/ as {url.rsplit('/', 1)[1]}" in lines[-1]
    nvidia = PRETRAINED["nvidia-ssd300-coco"].url
    for name, args in [
        ("detect", ["--input", synthetic_coco, "--output", tmp_path / "out"]),
        ("eval", ["--data-path", synthetic_coco]),
        ("export", ["--format", "onnx", "--output", tmp_path / "m.onnx"]),
        ("train", ["--data-path", synthetic_coco, "--save-folder", tmp_path / "ft"]),
    ]:
        run = tool(name, "--weights", "nvidia-ssd300-coco", *args, check=False, env=env)
        assert run.returncode == 1 and "Traceback" not in run.stderr, (name, run.stderr[-2000:])
        assert run.stderr.strip().splitlines()[-1].startswith("error: nvidia-ssd300-coco is not downloaded"), name
        assert f"download {nvidia} yourself" in run.stderr, name
    # Placed by hand, the name works in the tools as the file's path does.
    torch.manual_seed(0)
    state = build_model("ssd", num_classes=80).state_dict()
    assert list((tmp_path / "th" / "ssdfast").iterdir()) == []  # the failed download left no temporary
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "th" / "ssdfast" / NVIDIA_FILE)
    image = sorted((synthetic_coco / "val2017").iterdir())[0]
    run = tool("detect", "--weights", "nvidia-ssd300-coco", "--input", image, "--output", tmp_path / "o.jpg", env=env)
    assert "nvidia-ssd300-coco" in run.stderr and "is unverified" in run.stderr and (tmp_path / "o.jpg").is_file()


def test_the_known_names_are_listed_in_help_and_readme():
    import re
    import subprocess
    import sys

    from conftest import ROOT

    readme = (ROOT / "README.md").read_text()
    helps = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys\nfor t in ('train', 'eval', 'detect', 'export'):\n"
            "    print(f'=== {t}'); sys.argv = [t, '--help']\n    try: __import__(t).get_args()\n    except SystemExit: pass",
        ],
        cwd=ROOT / "tools",
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    pages = {t: " ".join(page.split()) for t, page in re.findall(r"=== (\w+)\n(.*?)(?====|\Z)", helps, re.S)}
    assert set(pages) == {"train", "eval", "detect", "export"}
    for entry in PRETRAINED.values():
        assert f"`{entry.name}`" in readme
        tools = ("train",) if entry.kind == "backbone" else ("train", "eval", "detect", "export")
        for name in tools:
            assert entry.name in pages[name].replace("- ", "-"), (entry.name, name)  # argparse breaks at hyphens
