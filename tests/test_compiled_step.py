"""The compiled training step (--compile) against the eager one, and GradScaler with fused SGD: a step
skipped for an inf gradient leaves the state the unfused oracle leaves (CPU), makes no host sync and
can be captured in the CUDA graph of the fp16 step (CUDA).

The step comparisons use torch.compile's aot_eager backend: the graphs TorchDynamo and AOTAutograd
trace, run by the eager kernels. It compiles SSDLite's step in about 20 s on this 2-core CPU, against
about 2 minutes for inductor (docs/training.md, "Compiled step"), and it gave bit-identical losses and
weights here; the tolerances (rtol 1e-4) leave room for AOTAutograd's decompositions to reorder a few
fp32 operations in another torch version. Inductor's own kernels are checked by the slow test."""

import pytest
import torch
from conftest import CUDA, DDP_RUN_ARGS, random_boxes, resume_args, tool, torchrun, train_args
from torch import nn

from ssdfast.anchors import AnchorSpec
from ssdfast.machinery.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from ssdfast.models import build_model
from ssdfast.models.ssd_base import SSDBase
from ssdfast.training.optimizer import build_optimizer, zero_momentum_buffers
from ssdfast.training.state import restore_optimizer, resume_training, training_state
from ssdfast.training.step import CompiledTrainStep, CudaGraphTrainStep, TrainStep

TINY = AnchorSpec(
    fig_size=64, feature_sizes=(4, 2, 1), steps=(16, 32, 64), scales=(13, 26, 45, 64), aspect_ratios=((2,),) * 3
)


class TinySSD(SSDBase):
    """An SSD small enough for fp16 on a CPU (SSDLite's fp16 convolutions take ~13 s a step here):
    64x64 images, three maps (4x4, 2x2, 1x1), 84 anchors."""

    def __init__(self, num_classes: int = 3):
        super().__init__(num_classes, TINY)

        def block(c_in, stride):
            return nn.Sequential(nn.Conv2d(c_in, 8, 3, stride=stride, padding=1), nn.BatchNorm2d(8), nn.ReLU())

        self.blocks = nn.ModuleList([block(3, 4), block(8, 4), block(8, 2), block(8, 2)])  # 64 -> 16, 4, 2, 1
        nd = TINY.boxes_per_location
        self.loc = nn.ModuleList(nn.Conv2d(8, n * 4, 3, padding=1) for n in nd)
        self.conf = nn.ModuleList(nn.Conv2d(8, n * (num_classes + 1), 3, padding=1) for n in nd)

    def feature_maps(self, x):
        x = self.blocks[0](x)
        maps = []
        for block in self.blocks[1:]:
            x = block(x)
            maps.append(x)
        return maps


def batches(steps, n, size, device="cpu", g_count=3):
    """`steps` batches of n random images with g_count boxes each, the last one padding."""
    out = []
    for i in range(steps):
        g = torch.Generator().manual_seed(100 + i)
        boxes = random_boxes(n * g_count, g).view(n, g_count, 4)
        labels = torch.randint(1, 4, (n, g_count), generator=g)
        labels[:, -1] = 0
        out.append(tuple(t.to(device) for t in (torch.randn(n, 3, size, size, generator=g), boxes, labels)))
    return out


def poisoned(model) -> torch.Tensor:
    """A factor (1 until a test sets it to inf) that multiplies one weight's gradient: an inf gradient
    injected from a tensor hook, so it reaches eager, compiled and captured backward passes alike."""
    factor = torch.ones((), device=model.anchors.device)
    next(model.loc.parameters()).register_hook(lambda grad: grad * factor)
    return factor


def sgd(model, fused=None):
    """SGD as training uses it (Nesterov momentum, weight decay); fused: with zero momentum buffers."""
    optimizer = torch.optim.SGD(
        model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4, fused=fused
    )
    if fused:
        zero_momentum_buffers(optimizer)
    return optimizer


def train(make_step, model, data, inf_at=(), amp_dtype=None, optimizer=None, scale=2.0**8):
    """Run make_step(model, optimizer, amp_dtype=, scaler=) over `data` (optimizer: sgd(model) by default),
    with an inf gradient at the steps in inf_at -> (losses [N], the scale after each step, the parameters
    after each step, the state_dict at the end)."""
    optimizer = optimizer or sgd(model)
    device = model.anchors.device
    scaler = torch.amp.GradScaler(device.type, init_scale=scale) if amp_dtype == torch.float16 else None
    step, factor = make_step(model, optimizer, amp_dtype=amp_dtype, scaler=scaler), poisoned(model)
    losses, scales, params = [], [], []
    for i, batch in enumerate(data):
        factor.fill_(float("inf") if i in inf_at else 1.0)
        losses.append(step(*batch).total)
        scales.append(scaler.get_scale() if scaler else None)
        params.append([p.detach().clone() for p in model.parameters()])
    return torch.stack(losses), scales, params, {k: v.clone() for k, v in model.state_dict().items()}


def assert_same_training(got, want, tol):
    torch.testing.assert_close(got[0], want[0], rtol=tol, atol=tol, msg="losses")
    assert got[1] == want[1], "scales"
    for name, value in want[3].items():
        torch.testing.assert_close(got[3][name].float(), value.float(), rtol=tol, atol=tol, msg=name)


def resume_optimizer(path, model, optimizer) -> None:
    """What resume_training does to a model ssdfast does not build (the tiny one, whose file no metadata check
    would accept): the weights, then the optimizer state through the same restore_optimizer."""
    ckpt = load_checkpoint(path)
    model.load_state_dict(ckpt["model"])
    restore_optimizer(optimizer, ckpt["optimizer"], path)


def save_state(path, model, optimizer, model_name: str = "tiny"):
    """last.pt of a run of `model` (3 categories) with `optimizer`'s state, as TrainingRun writes it."""
    state = training_state(
        model,
        optimizer,
        None,
        model_name=model_name,
        epoch=0,
        category_ids=[1, 2, 3],
        category_names=NAMES,
        best_ap=-1.0,
        args={},
    )
    save_checkpoint(path, state)
    return state


NAMES = ["a", "b", "c"]


def aot_eager(model, optimizer, **kwargs):
    return CompiledTrainStep(model, optimizer, backend="aot_eager", **kwargs)


def ssdlite():
    torch.manual_seed(0)
    return build_model("ssdlite", num_classes=3)


def tiny():
    torch.manual_seed(0)
    return TinySSD()


@pytest.mark.parametrize(
    "amp_dtype", [None, pytest.param(torch.bfloat16, marks=pytest.mark.slow)], ids=["fp32", "bf16"]
)
def test_compiled_ssdlite_steps_equal_eager_steps(amp_dtype):
    """SSDLite, batch 2 at 300x300 (its anchors fix the size), 3 steps of SGD with Nesterov momentum
    and weight decay: the losses and the weights (BN statistics included) after them."""
    data = batches(3, 2, 300)
    eager = train(TrainStep, ssdlite(), data, amp_dtype=amp_dtype)
    compiled = train(aot_eager, ssdlite(), data, amp_dtype=amp_dtype)
    assert_same_training(compiled, eager, 1e-4)


@pytest.mark.slow
def test_inductor_step_agrees_with_the_eager_step_to_rounding():
    """The default backend's generated CPU kernels (about 2 minutes to compile here, seconds from
    Inductor's cache on a rerun): the first step's loss parts to 1e-5 and its gradient's direction.
    Not its weights after several steps: SSDLite's BatchNorm over batch 2 on its 1x1 maps normalises
    two values to +-1, whose gradient is zero in exact arithmetic and rounding noise / sigma in floats,
    and hard negative mining ranks losses that differ in the last bit; so other kernels' rounding
    moves single gradients by percents (measured 1-4%) while the whole keeps its direction (cosine 1)."""
    data = batches(1, 2, 300)

    def first_step(make_step):
        model = ssdlite()
        loss = make_step(model, torch.optim.SGD(model.parameters(), lr=0.0))(*data[0])
        return torch.stack(list(loss)), torch.cat([p.grad.flatten() for p in model.parameters()])

    (eager_loss, eager_grad), (loss, grad) = first_step(TrainStep), first_step(CompiledTrainStep)
    torch.testing.assert_close(loss, eager_loss, rtol=1e-5, atol=1e-6)
    assert torch.nn.functional.cosine_similarity(grad, eager_grad, dim=0) > 0.999


def test_compiled_fp16_step_keeps_the_gradscaler_outside_and_skips_an_inf_step():
    """fp16 with a GradScaler around the compiled region: the step with an inf gradient is skipped
    (weights unchanged) and the scale halves, as in the eager step, which it equals over 4 steps."""
    data = batches(4, 4, 64)
    eager = train(TrainStep, tiny(), data, inf_at=(2,), amp_dtype=torch.float16)
    compiled = train(aot_eager, tiny(), data, inf_at=(2,), amp_dtype=torch.float16)
    assert_same_training(compiled, eager, 1e-4)
    losses, scales, params, _ = compiled
    assert scales[2] == scales[1] / 2
    assert all(torch.equal(a, b) for a, b in zip(params[2], params[1]))
    assert torch.isfinite(losses).all()


def test_compiled_step_leaves_the_state_dict_keys_alone():
    """No `_orig_mod.` prefix: the model is not wrapped, only the step's forward_loss is compiled."""
    model = ssdlite()
    keys = list(model.state_dict())
    step = aot_eager(model, torch.optim.SGD(model.parameters(), lr=0.01))
    assert list(step.model.state_dict()) == keys and step.model is model


@pytest.mark.parametrize("inf_at", [0, 2], ids=["first_step", "later_step"])
def test_fused_sgd_skips_an_inf_step_like_the_unfused_one(inf_at):
    """GradScaler('cpu') with fused SGD against the unfused oracle and the rule: the step with an inf
    gradient changes no weight and no momentum, the scale is multiplied by the backoff 0.5, and the
    steps after it agree. The first step is where torch's fused SGD alone goes wrong (its momentum
    buffers are left uninitialised when that step is skipped): zero_momentum_buffers avoids it."""
    data = batches(4, 4, 64)
    unfused = train(TrainStep, tiny(), data, inf_at=(inf_at,), amp_dtype=torch.float16)
    model = tiny()
    fused = train(TrainStep, model, data, inf_at=(inf_at,), amp_dtype=torch.float16, optimizer=sgd(model, fused=True))
    assert_same_training(fused, unfused, 1e-5)
    for losses, scales, params, _ in (unfused, fused):
        before = [p.detach() for p in tiny().parameters()] if inf_at == 0 else params[inf_at - 1]
        assert all(torch.equal(a, b) for a, b in zip(params[inf_at], before))
        assert scales[inf_at] == (scales[inf_at - 1] if inf_at else 2.0**8) * 0.5
        assert torch.isfinite(losses).all()


def test_a_resumed_fused_sgd_without_momentum_buffers_skips_its_first_step_like_the_unfused_one(tmp_path):
    """A checkpoint whose optimizer holds no momentum buffers (saved before any step was taken) resumed
    into fused SGD, whose first step then has an inf gradient: loading the state drops the zero buffers
    build_optimizer made, so resume_training gives them back; the steps equal the unfused oracle's."""
    path = tmp_path / "last.pt"
    model = tiny()
    assert not save_state(path, model, sgd(model))["optimizer"]["state"]  # no buffers in the file
    model = tiny()
    optimizer = sgd(model, fused=True)
    resume_optimizer(path, model, optimizer)
    data = batches(4, 4, 64)
    fused = train(TrainStep, model, data, inf_at=(0,), amp_dtype=torch.float16, optimizer=optimizer)
    unfused = train(TrainStep, tiny(), data, inf_at=(0,), amp_dtype=torch.float16)
    assert_same_training(fused, unfused, 1e-5)


def test_resuming_keeps_this_runs_optimizer_settings_and_takes_the_saved_momentum(tmp_path):
    """torch's load_state_dict would put back the saved groups' settings; a resume keeps those this run
    built (its lr tensor, which a CUDA graph reads; its weight decay and momentum flags; fused) and takes
    the saved momentum buffers. Another group layout (--no-bn-weight-decay on one run only) is a
    CheckpointError naming the flag."""
    path, cpu = tmp_path / "last.pt", torch.device("cpu")
    model = tiny()
    saved_optimizer = build_optimizer(model, 0.05, cpu, momentum=0.9, nesterov=True, weight_decay=5e-4)
    train(TrainStep, model, batches(2, 4, 64), optimizer=saved_optimizer)
    save_state(path, model, saved_optimizer)
    resumed = tiny()
    optimizer = build_optimizer(resumed, 0.01, cpu, momentum=0.8, nesterov=False, weight_decay=1e-4, lr_as_tensor=True)
    optimizer.param_groups[0]["fused"] = True  # as a CUDA run builds it
    lr = optimizer.param_groups[0]["lr"]
    resume_optimizer(path, resumed, optimizer)
    group = optimizer.param_groups[0]
    assert group["lr"] is lr and float(lr) == pytest.approx(0.01)
    assert (group["momentum"], group["nesterov"], group["weight_decay"], group["fused"]) == (0.8, False, 1e-4, True)
    for before, after in zip(saved_optimizer.param_groups[0]["params"], group["params"]):
        assert torch.equal(optimizer.state[after]["momentum_buffer"], saved_optimizer.state[before]["momentum_buffer"])

    split = build_optimizer(
        tiny(), 0.01, cpu, momentum=0.9, nesterov=True, weight_decay=5e-4, decay_norms_and_biases=False
    )
    with pytest.raises(CheckpointError, match="--no-bn-weight-decay"):
        resume_optimizer(path, tiny(), split)


def test_resumed_momentum_buffers_take_their_parameters_memory_layout(tmp_path):
    """A checkpoint of an NCHW run (a CPU run) resumed into a channels_last model (a GPU run): each momentum
    buffer gets its parameter's strides (fused SGD's kernel refuses mismatched ones) and keeps its values."""
    model = ssdlite()
    optimizer = sgd(model)
    train(TrainStep, model, batches(1, 2, 300), optimizer=optimizer)
    save_state(tmp_path / "last.pt", model, optimizer, "ssdlite300_mobilenetv2")
    resumed = ssdlite().to(memory_format=torch.channels_last)
    resumed_optimizer = sgd(resumed, fused=True)
    resume_training(
        tmp_path / "last.pt",
        resumed,
        resumed_optimizer,
        None,
        model_name="ssdlite300_mobilenetv2",
        category_names=NAMES,
    )
    saved = [optimizer.state[p]["momentum_buffer"] for p in model.parameters()]
    assert any(buffer.stride() != param.stride() for buffer, param in zip(saved, resumed.parameters()))
    for param, buffer in zip(resumed.parameters(), saved):
        loaded = resumed_optimizer.state[param]["momentum_buffer"]
        assert loaded.stride() == param.stride() and torch.equal(loaded, buffer)


def test_graph_step_creates_the_scaler_state_before_the_warm_up_and_restores_it_in_place():
    """What the CUDA-graph step does around its warm-up, on CPU: the scaler's scale and growth tracker
    exist before it (so the graph reads those tensors), and the warm-up's changes to them (a skipped
    step halves the scale) are undone in place. Without a fused optimizer the scaler is refused."""
    model = tiny()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, fused=True)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    step = CudaGraphTrainStep(model, optimizer, amp_dtype=torch.float16, scaler=scaler)
    snapshot = step._snapshot()
    scale, tracker = scaler._scale, scaler._growth_tracker
    assert (scale.item(), tracker.item()) == (2.0**8, 0)
    factor = poisoned(model)
    for i, batch in enumerate(batches(3, 4, 64)):  # what the warm-up does, with one inf gradient
        factor.fill_(float("inf") if i == 1 else 1.0)
        TrainStep.__call__(step, *batch)
    assert scaler.get_scale() == 2.0**7
    step._restore(snapshot)
    assert scaler._scale is scale and scaler._growth_tracker is tracker
    assert (scale.item(), tracker.item()) == (2.0**8, 0)
    with pytest.raises(ValueError, match="need a fused optimizer"):
        CudaGraphTrainStep(model, torch.optim.SGD(model.parameters(), lr=0.01), scaler=scaler)


def test_train_py_compile_trains_and_writes_a_checkpoint_that_loads_without_compile(synthetic_coco, tmp_path):
    """tools/train.py --compile (aot_eager: inductor's CPU compile alone takes minutes) for one short
    epoch: it trains, says so in its header line, and last.pt loads strictly into an uncompiled model."""
    result = tool(
        "train",
        *train_args(synthetic_coco, tmp_path, 1, "--iters-per-epoch", 2, "--eval-every", 0),
        "--compile",
        "--compile-backend",
        "aot_eager",
    )
    assert "compile default" in result.stdout
    state = load_checkpoint(tmp_path / "last.pt")["model"]
    assert not [k for k in state if "_orig_mod" in k]
    model = build_model("ssdlite", num_classes=3)
    model.load_state_dict(state)  # strict: the same keys as an uncompiled model's


def test_train_py_refuses_compile_combinations_that_cannot_work(synthetic_coco, tmp_path):
    graphs = tool("train", *train_args(synthetic_coco, tmp_path, 1), "--compile", "--cuda-graphs", check=False)
    assert graphs.returncode != 0
    assert graphs.stderr.strip().splitlines() == [
        "error: --compile and --cuda-graphs exclude each other: --compile-mode reduce-overhead replays the "
        "compiled forward and backward from CUDA graphs"
    ]
    mode = tool("train", *train_args(synthetic_coco, tmp_path, 1), "--compile-mode", "max-autotune", check=False)
    assert mode.returncode == 2 and "--compile-mode and --compile-backend need --compile" in mode.stderr


@pytest.mark.slow
def test_a_compiled_run_resumes_to_the_weights_of_an_uninterrupted_eager_run(straight_run, synthetic_coco, tmp_path):
    """Epoch 0 compiled, a new process resumes epoch 1 compiled: the weights equal those of the
    uninterrupted eager run of the same arguments (straight_run)."""
    compiled = ("--compile", "--compile-backend", "aot_eager")
    tool("train", *resume_args(synthetic_coco, tmp_path, *compiled, epochs=1))
    resumed = tool("train", *resume_args(synthetic_coco, tmp_path, *compiled))
    assert "resuming from" in resumed.stdout
    final, want = load_checkpoint(tmp_path / "last.pt"), load_checkpoint(straight_run / "last.pt")
    assert final["epoch"] == want["epoch"] == 1
    for key, value in want["model"].items():
        torch.testing.assert_close(final["model"][key], value, rtol=1e-4, atol=1e-5, msg=key)


@pytest.mark.slow
def test_compiled_ddp_run_equals_the_eager_ddp_run(ddp_run, synthetic_coco, tmp_path):
    """torchrun, 2 processes (gloo): under DDP the compiled step traces around DDP's forward (not one
    graph); the gradients are still averaged across the ranks: the same weights as the eager run (ddp_run:
    the same flags without --compile)."""
    compiled_args = ("--compile", "--compile-backend", "aot_eager")
    tool("train", *train_args(synthetic_coco, tmp_path, 1, *DDP_RUN_ARGS, *compiled_args), prefix=torchrun())
    eager, compiled = (load_checkpoint(folder / "last.pt")["model"] for folder in (ddp_run, tmp_path))
    for key, value in eager.items():
        torch.testing.assert_close(compiled[key], value, rtol=1e-4, atol=1e-5, msg=key)


# --- CUDA ------------------------------------------------------------------------------------------------


@CUDA
@pytest.mark.cuda
def test_gradscaler_with_fused_sgd_makes_no_host_sync_even_when_it_skips_a_step():
    """fp16 TrainStep with GradScaler and the fused SGD of build_optimizer under
    torch.cuda.set_sync_debug_mode("error"), an inf gradient at the second step: no sync (any would
    raise), that step is skipped and the scale halves (read afterwards)."""
    torch.manual_seed(0)
    model = build_model("ssdlite", num_classes=3).cuda()
    device = torch.device("cuda")
    optimizer = build_optimizer(model, 0.01, device, momentum=0.9, nesterov=True, weight_decay=5e-4)
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0**8)
    step, factor = TrainStep(model, optimizer, amp_dtype=torch.float16, scaler=scaler), poisoned(model)
    data = batches(4, 4, 300, device="cuda")
    step(*data[0])  # lazy initialisation (the scaler's tensors) outside the checked region
    scales, params = [scaler.get_scale()], []
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for i, batch in enumerate(data[1:]):
            factor.fill_(float("inf") if i == 1 else 1.0)
            step(*batch)
            params.append([p.detach().clone() for p in model.parameters()])
            scales.append(scaler._scale.clone())
    finally:
        torch.cuda.set_sync_debug_mode(0)
    scales = [float(s) for s in scales]
    assert scales[2] == scales[1] / 2
    assert all(torch.equal(a, b) for a, b in zip(params[1], params[0]))


@CUDA
@pytest.mark.cuda
def test_cuda_graph_fp16_steps_equal_eager_steps():
    """CudaGraphTrainStep with fp16, GradScaler and fused SGD (lr a device tensor) over 5 steps, an
    inf gradient at the third: the same losses, scales and weights as the eager step. Tolerance as for
    bf16 in tests/test_cuda_training.py, for fp16's 10-bit mantissa: 2e-2."""
    data, runs = batches(5, 4, 300, device="cuda"), []
    torch.backends.cudnn.deterministic = True
    try:
        for make_step in (TrainStep, CudaGraphTrainStep):
            torch.manual_seed(0)
            model = build_model("ssdlite", num_classes=3).cuda()
            optimizer = build_optimizer(
                model, 0.01, torch.device("cuda"), momentum=0.9, nesterov=True, weight_decay=5e-4, lr_as_tensor=True
            )
            runs.append(train(make_step, model, data, inf_at=(2,), amp_dtype=torch.float16, optimizer=optimizer))
    finally:
        torch.backends.cudnn.deterministic = False
    eager, graph = runs
    assert eager[1][2] == eager[1][1] / 2
    assert_same_training(graph, eager, 2e-2)
