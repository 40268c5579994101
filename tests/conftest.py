"""Shared fixtures: devices (CUDA skips cleanly without a GPU), random boxes, a small synthetic COCO set."""
import pytest
import torch

from ssdfast.data.synthetic import write_synthetic_coco

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
DEVICES = ["cpu", pytest.param("cuda", marks=[CUDA, pytest.mark.cuda])]


def random_boxes(n: int, generator: torch.Generator | None = None, max_size: float = 0.5,
                 device="cpu") -> torch.Tensor:
    """n valid xyxy boxes inside [0, 1] (float32)."""
    xy = torch.rand(n, 2, generator=generator) * (1 - max_size)
    wh = torch.rand(n, 2, generator=generator) * max_size + 1e-3
    return torch.cat([xy, xy + wh], dim=1).to(device)


def grid_boxes(n: int, generator: torch.Generator, cells: int = 4, device="cpu") -> torch.Tensor:
    """n boxes with coordinates on a coarse grid: many identical boxes and exact IoU ties."""
    a = torch.randint(0, cells, (n, 2), generator=generator)
    b = a + torch.randint(1, cells + 1, (n, 2), generator=generator)
    return (torch.cat([a, b], dim=1).float() / (2 * cells)).to(device)


@pytest.fixture(scope="session")
def synthetic_coco(tmp_path_factory):
    """A small COCO-layout dataset (24 train, 8 val images) written once per session."""
    return write_synthetic_coco(tmp_path_factory.mktemp("synthetic_coco"), num_train=24, num_val=8, seed=1)
