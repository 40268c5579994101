"""The training step's CPU-testable parts: the CUDA-graph warm-up is undone exactly."""
import torch

from ssdfast.engine import CudaGraphTrainStep, TrainStep
from ssdfast.models import build_model


def batch(seed, n=2, g_count=3):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, g_count, 2, generator=g) * 0.6
    boxes = torch.cat([xy, xy + 0.3], -1)
    return torch.randn(n, 3, 300, 300, generator=g), boxes, torch.randint(1, 4, (n, g_count), generator=g)


def make(cls, resume_steps=0):
    torch.manual_seed(0)
    model = build_model("ssdlite", num_classes=3, backbone_weights="none")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    step = cls(model, optimizer)
    for i in range(resume_steps):  # optimizer state that exists before the capture (a resumed run)
        TrainStep.__call__(step, *batch(50 + i))
    return step


def test_graph_warm_up_is_undone_exactly():
    """_snapshot -> warm-up steps -> _restore leaves parameters, BN statistics and existing optimizer
    state as they were, and zeroes the state the warm-up created; the next step then equals the
    eager step (SGD momentum started at zero == no momentum yet, with dampening 0)."""
    for resume_steps in (0, 2):
        graph_step, eager_step = make(CudaGraphTrainStep, resume_steps), make(TrainStep, resume_steps)
        before = {k: v.clone() for k, v in graph_step.model.state_dict().items()}
        snapshot = graph_step._snapshot()
        for i in range(3):
            TrainStep.__call__(graph_step, *batch(i))  # what the warm-up does
        graph_step._restore(snapshot)
        for k, v in graph_step.model.state_dict().items():
            assert torch.equal(v, before[k]), k
        # The first real step from the restored state equals the first eager step.
        TrainStep.__call__(graph_step, *batch(99))
        eager_step(*batch(99))
        for (k, v), w in zip(graph_step.model.state_dict().items(), eager_step.model.state_dict().values()):
            torch.testing.assert_close(v, w, rtol=1e-6, atol=1e-7, msg=k)
