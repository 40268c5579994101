"""The training step's CPU-testable parts: the CUDA-graph warm-up is undone exactly; where an epoch
stands and when to checkpoint it."""

import pytest
import torch

from ssdfast.models import build_model
from ssdfast.training.checkpoint_schedule import CheckpointSchedule
from ssdfast.training.epoch import EpochProgress, NonFiniteLossError
from ssdfast.training.step import CudaGraphTrainStep, TrainStep


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


def test_checkpoint_schedule_reads_iterations_and_times():
    every3 = CheckpointSchedule("3")
    assert [it for it in range(10) if every3.due(it)] == [2, 5, 8]
    assert not any(CheckpointSchedule("0").due(it) for it in range(10))
    for spec, seconds in (("90s", 90), ("10m", 600), ("1.5h", 5400)):
        assert CheckpointSchedule(spec).seconds == seconds
    timed = CheckpointSchedule("1s")
    assert not timed.due(0)
    timed.last -= 1.0  # a second later
    assert timed.due(0)
    timed.saved()
    assert not timed.due(1)
    for bad in ("ten", "5x", "-1", "1.5", ""):
        with pytest.raises(ValueError, match="--checkpoint-every"):
            CheckpointSchedule(bad)


def test_epoch_progress_round_trips_through_a_checkpoint_state():
    progress = EpochProgress(3, "cpu")
    progress.iteration, progress.seen, progress.images = 5, 4, 16
    progress.totals += torch.tensor([8.0, 2.0, 6.0])
    state = progress.state_dict()
    again = EpochProgress(3, "cpu", state)
    assert again.iteration == 5 and again.means() == [2.0, 0.5, 1.5] and again.seconds() >= state["elapsed"]
    progress.first_bad.fill_(4)  # a NaN at iteration 4: never saved
    with pytest.raises(NonFiniteLossError, match="epoch 3, iteration 4"):
        progress.state_dict()
