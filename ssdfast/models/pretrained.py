"""Pretrained starting points by name, the way torchvision's weights API and Ultralytics name them:

    python tools/train.py --data-path my_data --weights nvidia-ssd300-coco   # fine-tune a COCO detector
    python tools/detect.py --weights nvidia-ssd300-coco --input photos/ --output out/
    ssdfast.load("nvidia-ssd300-coco")
    python tools/train.py --data-path my_data --model ssdlite --backbone-weights imagenet   # the default

A name resolves to one file in the cache, cache_dir(): $TORCH_HOME/ssdfast when TORCH_HOME is set, else
$XDG_CACHE_HOME/ssdfast or ~/.cache/ssdfast (the folders torch.hub chooses, with ssdfast for torch). A file
missing there is downloaded once: into a temporary file beside it, its sha256 checked, then renamed in; a
file there is checked again at every use (a few tenths of a second for 100 MB), so what is loaded is what
was published. Loading is the caller's, through the safe loader (torch.load(weights_only=True)).

A name whose publisher gives no sha256 is never downloaded: with nothing to check a download against, the
first download would be trusted blindly. The user downloads it and places it in the cache (or passes its
path); every use then says, in one line, that the file is unverified and what its sha256 is.

Without PyTorch: the tools' --help lists the names (known_names). Failures are CheckpointError (what the
tools print as one `error:` line): the URL, the file name, and where to put it by hand.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ssdfast.machinery.outputs import OutputError, atomic_output

if TYPE_CHECKING:
    from ssdfast.models.registry import ModelEntry

MAX_DOWNLOAD_BYTES = 2**30  # a download larger than 1 GiB is cut off (the largest named file is about 100 MB)
TIMEOUT_S = 30  # seconds a connection may stay silent before the download is given up
HASH_PREFIX = re.compile(r"-([a-f0-9]{8,})\.")  # torchvision's (and torch.hub's) sha256 prefix in a file name


@dataclass(frozen=True)
class Pretrained:
    """A named weights file. url and sha256 are given, or read from torchvision's own Weights enum."""

    name: str
    kind: str  # "detector" (--weights, ssdfast.load) or "backbone" (--backbone-weights)
    architecture: str  # a detector's model name (ssdfast/models/registry.py); a backbone's torchvision classifier
    summary: str  # one phrase for --help and the README
    url: str = ""
    sha256: str | None = None  # hex digest, or the prefix its publisher gives; None: none published
    torchvision: str = ""  # "ResNet50_Weights.IMAGENET1K_V1": url and sha256 prefix from torchvision's enum

    def source(self) -> tuple[str, str | None]:
        """(url, sha256 or its published prefix, or None)."""
        if not self.torchvision:
            return self.url, self.sha256
        import torchvision.models

        enum, member = self.torchvision.split(".")
        url = getattr(getattr(torchvision.models, enum), member).url
        found = HASH_PREFIX.search(url.rsplit("/", 1)[-1])
        return url, found.group(1) if found else None


PRETRAINED: dict[str, Pretrained] = {
    entry.name: entry
    for entry in (
        # NVIDIA DeepLearningExamples' SSD300-ResNet50 trained on COCO 2017 (AMP), the file torch.hub's
        # `nvidia_ssd` entry point loads (PyTorch/Detection/SSD/src/entrypoints.py). NGC publishes no sha256
        # for it, so it is not downloaded by ssdfast: put the file in cache_dir() by hand (module docstring).
        Pretrained(
            "nvidia-ssd300-coco",
            "detector",
            "ssd300_resnet50",
            "NVIDIA's SSD300-ResNet50, COCO 2017 (80 classes); place it by hand: no published sha256",
            url="https://api.ngc.nvidia.com/v2/models/nvidia/ssd_pyt_ckpt_amp/versions/20.06.0/files/"
            "nvidia_ssdpyt_amp_200703.pt",
        ),
        Pretrained(
            "resnet50-imagenet",
            "backbone",
            "resnet50",
            "torchvision's ResNet-50, ImageNet-1k (IMAGENET1K_V1), for --model ssd",
            torchvision="ResNet50_Weights.IMAGENET1K_V1",
        ),
        Pretrained(
            "mobilenet_v2-imagenet",
            "backbone",
            "mobilenet_v2",
            "torchvision's MobileNetV2, ImageNet-1k (IMAGENET1K_V1), for --model ssdlite",
            torchvision="MobileNet_V2_Weights.IMAGENET1K_V1",
        ),
    )
}


def known_names(kind: str) -> str:
    """The names of one kind for --help: "a, b" (backbones: 'imagenet' first, the --model's own)."""
    names = [entry.name for entry in PRETRAINED.values() if entry.kind == kind]
    return ", ".join(["imagenet (the --model's backbone's)", *names] if kind == "backbone" else names)


def cache_dir() -> Path:
    """Where named weights live: $TORCH_HOME/ssdfast, else $XDG_CACHE_HOME/ssdfast, else ~/.cache/ssdfast."""
    if os.environ.get("TORCH_HOME"):
        return Path(os.environ["TORCH_HOME"]).expanduser() / "ssdfast"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path("~/.cache").expanduser()).expanduser() / "ssdfast"


def file_name(url: str) -> str:
    return url.rsplit("/", 1)[-1]


def resolve(weights, kind: str = "detector"):
    """The file `weights` names: an existing path is itself; a known name of this kind, its file in the
    cache (downloaded and checked first when missing); anything else is returned unchanged (the loader
    then names the missing file). CheckpointError for a name that cannot be had, or of the other kind."""
    if weights is None or Path(weights).exists() or str(weights) not in PRETRAINED:
        return weights
    return fetch_named(_of_kind(PRETRAINED[str(weights)], kind))


def weights_file(weights, kind: str = "detector") -> Path:
    """resolve(), then the file must be there: the tools call it before any other work, so that a missing
    file or a name that cannot be had is found before the dataset loads. CheckpointError otherwise."""
    from ssdfast.machinery.checkpoint import existing_checkpoint

    return existing_checkpoint(resolve(weights, kind))


def resolve_backbone(weights, model: ModelEntry) -> Path | None:
    """The backbone weights file for `model` (a registry entry): None for 'none' (random init); 'imagenet' and
    the backbone names, their checked file in the cache; a path, itself. FileNotFoundError for a path that
    does not exist; CheckpointError for a path that is not a regular file, or a name that cannot be had or
    does not fit the model."""
    if weights in (None, "none"):
        return None
    own = PRETRAINED[model.imagenet]
    weights = own.name if weights == "imagenet" else str(weights)
    if Path(weights).exists():  # a FIFO or a folder is refused here, before it could be opened
        from ssdfast.machinery.checkpoint import existing_checkpoint

        return existing_checkpoint(weights)
    if weights not in PRETRAINED:
        raise FileNotFoundError(
            f"backbone weights file not found: {weights} (expected none, {known_names('backbone')}, or a path to "
            f"a torchvision {own.architecture} state dict)"
        )
    entry = _of_kind(PRETRAINED[weights], "backbone")
    if entry.architecture != own.architecture:
        raise _error(
            f"--backbone-weights {entry.name} ({entry.summary}) does not fit {model.name}, whose backbone is "
            f"{own.architecture}: pass imagenet ({own.name})"
        )
    return fetch_named(entry)


def _of_kind(entry: Pretrained, kind: str) -> Pretrained:
    if entry.kind != kind:
        flag = "--backbone-weights" if entry.kind == "backbone" else "--weights"
        raise _error(f"{entry.name} are {entry.kind} weights ({entry.summary}): pass them as {flag}")
    return entry


def fetch_named(entry: Pretrained) -> Path:
    """The checked file of a named entry in cache_dir(), downloaded first when missing."""
    url, sha256 = entry.source()
    target = cache_dir() / file_name(url)
    if entry.kind == "backbone":
        instead = "or pass its path to --backbone-weights, or --backbone-weights none for random init"
    else:
        instead = "or pass its path to --weights"
    place = f"put it in {target.parent}/ as {target.name} ({instead})"
    if target.is_file():
        digest = sha256_of(target)
        if sha256 is None:
            print(
                f"note: {entry.name}: {target} is unverified (its publisher gives no sha256); its sha256 is {digest}",
                file=sys.stderr,
            )
        elif not digest.startswith(sha256):
            raise _error(
                f"{target} is not the published {entry.name}: sha256 {digest[:16]}..., expected {sha256}...; "
                f"delete it to download it again from {url}"
            )
        return target
    if sha256 is None:
        raise _error(
            f"{entry.name} is not downloaded by ssdfast: its publisher gives no sha256 to check a download "
            f"against. To use it anyway, download {url} yourself and {place}"
        )
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise _error(
            f"cannot create the weights cache {target.parent} ({error.strerror}): set TORCH_HOME to a writable "
            f"folder, or download {url} and {instead.removeprefix('or ')}"
        ) from error
    print(f"downloading {entry.name}: {url} -> {target}", file=sys.stderr)
    try:
        with atomic_output(target, f"weights {entry.name}") as tmp:  # a failure leaves no temporary behind
            try:
                digest = download(url, tmp)
            except ConnectionError as error:
                raise _error(
                    f"cannot download {url} ({error}); without a connection, download it elsewhere and {place}"
                ) from error
            if not digest.startswith(sha256):
                raise _error(
                    f"the download of {entry.name} from {url} has sha256 {digest[:16]}..., not the published "
                    f"{sha256}...: nothing was kept. Try again later, or download it elsewhere and {place}"
                )
    except OutputError as error:  # the cache's disk is full or read-only
        raise _error(f"{error} (set TORCH_HOME to another folder)") from error
    return target


def download(url: str, dest: Path) -> str:
    """Copy `url` into the file `dest`, at most MAX_DOWNLOAD_BYTES; returns the sha256 of what was received.
    ConnectionError (its reason as the message) when the network fails or the server refuses; a failed
    write (a full disk) is the OSError of the write."""
    digest, size = hashlib.sha256(), 0
    try:
        response = urllib.request.urlopen(url, timeout=TIMEOUT_S)  # noqa: S310  (the URLs are the entries' own)
    except (OSError, ValueError, http.client.HTTPException) as error:
        raise ConnectionError(_reason(error)) from error
    with response, open(dest, "wb") as out:
        while True:
            try:
                chunk = response.read(2**20)
            except (OSError, http.client.HTTPException) as error:
                raise ConnectionError(_reason(error)) from error
            if not chunk:
                return digest.hexdigest()
            size += len(chunk)
            if size > MAX_DOWNLOAD_BYTES:
                raise ConnectionError(f"it sent more than {MAX_DOWNLOAD_BYTES / 2**30:.0f} GiB: not a weights file")
            digest.update(chunk)
            out.write(chunk)


def _reason(error: BaseException) -> str:
    """What went wrong, in a few words: urllib's reason (a refused connection, an unknown host, HTTP 404)."""
    reason = getattr(error, "reason", None) or getattr(error, "strerror", None) or error
    if isinstance(error, urllib.error.HTTPError):
        reason = f"HTTP {error.code} {error.reason}"
    return " ".join(str(reason).split())[:200] or error.__class__.__name__


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(2**20):
            digest.update(chunk)
    return digest.hexdigest()


def _error(message: str) -> Exception:
    """A CheckpointError (what every tool reports as one `error:` line); imported here, where PyTorch is
    about to load weights anyway, so that the names stay readable without it."""
    from ssdfast.machinery.checkpoint import CheckpointError

    return CheckpointError(message)
