"""The Dockerfile, requirements and pyproject agree with each other."""

import re
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent


def pins(path):
    out = {}
    for line in (ROOT / path).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            match = re.match(r"([A-Za-z0-9_.\-]+)\s*(==|>=)?\s*([\w.]+)?", line)
            out[match.group(1).lower()] = (match.group(2), match.group(3))
    return out


def test_docker_base_image_matches_the_torch_pin():
    dockerfile = (ROOT / "Dockerfile").read_text()
    base = re.search(r"ARG BASE_IMAGE=pytorch/pytorch:(\d+\.\d+\.\d+)-cuda(\d+)\.(\d+)-cudnn\d+-devel", dockerfile)
    assert base, "the base image must be an official pytorch/pytorch ...-devel image"
    assert pins("requirements.txt")["torch"] == ("==", base.group(1))
    assert int(base.group(2)) >= 13  # DALI pin is the CUDA 13 build
    assert "nvidia-dali-cuda130" in pins("requirements-dev.txt")


def test_dockerfile_builds_the_kernels_for_every_supported_gpu_and_keeps_the_seed_usage():
    dockerfile = (ROOT / "Dockerfile").read_text()
    archs = re.search(r'TORCH_CUDA_ARCH_LIST="([^"]+)"', dockerfile).group(1).replace("+PTX", "").split(";")
    assert {"7.5", "8.0", "8.6", "8.9", "9.0", "10.0", "12.0"} <= set(archs)  # Turing .. Blackwell
    assert "7.0" not in archs  # Volta: dropped by CUDA 13
    assert "FORCE_CUDA=1" in dockerfile and "-r requirements-dev.txt" in dockerfile
    cmd = re.search(r"CMD \[(.*)\]", dockerfile).group(1)
    assert '"tools/train.py", "--data-path", "/coco", "--save-folder", "/trained_models"' in cmd


def test_pyproject_dependencies_are_pinned_in_requirements():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = pins("requirements.txt")
    for dep in project["dependencies"]:
        assert dep.lower() in runtime, f"{dep} is in pyproject.toml but not in requirements.txt"
    dev = pins("requirements-dev.txt") | pins("requirements-edge.txt")  # edge: installed by hand, not in CI
    for extra in project["optional-dependencies"].values():
        for dep in extra:
            assert dep.lower() in dev or dep.lower() in runtime, dep
