"""Data loading throughput with the training augmentation: PyTorch path (2 workers) vs DALI."""

import pytest
from conftest import CUDA, run

from ssdfast.data import build_loader

try:
    import nvidia.dali  # noqa: F401

    HAS_DALI = True
except ImportError:
    HAS_DALI = False


def epoch(loader):
    n = 0
    for batch in loader:
        n += len(batch.images)
    return n


@pytest.mark.parametrize(
    "path",
    [
        "pytorch_2_workers",
        pytest.param("dali_cpu", marks=pytest.mark.skipif(not HAS_DALI, reason="DALI not installed")),
        pytest.param("dali_gpu", marks=[CUDA, pytest.mark.skipif(not HAS_DALI, reason="DALI not installed")]),
    ],
)
def test_training_data_loading(benchmark, bench_coco, path):
    benchmark.group = "data loading, training augmentation, 256 images, batch 32"
    device = "cuda" if path == "dali_gpu" else "cpu"
    loader = build_loader(
        bench_coco,
        "train",
        train=True,
        batch_size=32,
        num_workers=2,
        backend="pytorch" if path == "pytorch_2_workers" else "dali",
        device=device,
    )
    count = run(
        benchmark,
        lambda: epoch(loader),
        role="baseline" if path.startswith("pytorch") else "candidate",
        items=256,
        rounds=3,
        device=device,
    )
    assert count == 256
