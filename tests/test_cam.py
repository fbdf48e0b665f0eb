"""Grad-CAM: values by hand, closed form == autograd == an independent reference, no side effects."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from conftest import gap_model, mlp_head_model
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.modules.module import register_module_forward_hook

from drip.cam import CAM_METHODS, CAM_TARGETS, LayerGradCam, find_gap_linear_head
from drip.errors import DripInputError, DripModelError
from drip.models import digits_cnn


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def test_gap_head_map_matches_hand_computation():
    # The layer is the identity on a 2-channel 2x2 input, so A = x and dz_c/dA_k = W[c, k] / 4.
    model = nn.Sequential(nn.Identity(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 2))
    with torch.no_grad():
        model[3].weight.copy_(torch.tensor([[2.0, -1.0], [0.5, 1.0]]))
        model[3].bias.zero_()
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[4.0, 0.0], [1.0, 8.0]]]])
    for path in ("closed_form", "autograd"):
        cam = LayerGradCam(model, "0", path=path)
        maps = cam(x, torch.tensor([0])).maps
        # class 0: (2*A0 - 1*A1) / 4 = [[-2, 4], [5, 0]] / 4, then ReLU
        assert torch.allclose(maps, torch.tensor([[[0.0, 1.0], [1.25, 0.0]]])), path
        maps = cam(x, torch.tensor([1])).maps
        # class 1: (0.5*A0 + 1*A1) / 4 = [[4.5, 1], [2.5, 10]] / 4
        assert torch.allclose(maps, torch.tensor([[[1.125, 0.25], [0.625, 2.5]]])), path


def test_margin_map_on_a_gap_head_matches_hand_computation():
    # The model of the test above: z = W @ GAP(x) = [2*2.5 - 3.25, 0.5*2.5 + 3.25] = [1.75, 4.5].
    model = nn.Sequential(nn.Identity(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 2))
    with torch.no_grad():
        model[3].weight.copy_(torch.tensor([[2.0, -1.0], [0.5, 1.0]]))
        model[3].bias.zero_()
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[4.0, 0.0], [1.0, 8.0]]]])
    for path in ("closed_form", "autograd"):
        cam = LayerGradCam(model, "0", path=path, target="margin")
        # class 0 against its rival 1: ((2 - 0.5)*A0 + (-1 - 1)*A1) / 4 = [[-6.5, 3], [2.5, -10]] / 4
        assert torch.allclose(cam(x, torch.tensor([0])).maps, torch.tensor([[[0.0, 0.75], [0.625, 0.0]]]))
        # class 1 against 0: the negation, [[6.5, -3], [-2.5, 10]] / 4
        assert torch.allclose(cam(x, torch.tensor([1])).maps, torch.tensor([[[1.625, 0.0], [0.0, 2.5]]]))
        # logprob of class 0: (1 - p0) * (W0 - W1) / 4 with p0 = sigmoid(1.75 - 4.5)
        p0 = torch.sigmoid(torch.tensor(1.75 - 4.5))
        expected = torch.relu((1 - p0) * torch.tensor([[-6.5, 3.0], [2.5, -10.0]]) / 4)
        logprob = LayerGradCam(model, "0", path=path, target="logprob")(x, torch.tensor([0])).maps
        assert torch.allclose(logprob, expected[None])


def test_margin_target_needs_two_classes():
    model = nn.Sequential(nn.Identity(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 1))
    with pytest.raises(DripModelError, match="compares classes"):
        LayerGradCam(model, "0", target="margin")(torch.rand(1, 2, 2, 2), torch.tensor([0]))
    with pytest.raises(DripInputError, match="target"):
        LayerGradCam(model, "0", target="loss")


def test_flatten_head_map_matches_hand_computation():
    # Flatten + Linear: dz_c/dA_{k,s} = W[c, 2k + s]; alpha_k is its mean over the 2 positions.
    model = nn.Sequential(nn.Identity(), nn.Flatten(), nn.Linear(4, 1))
    with torch.no_grad():
        model[2].weight.copy_(torch.tensor([[1.0, 3.0, -2.0, 0.0]]))
    x = torch.tensor([[[1.0, 2.0], [3.0, -1.0]]])  # (B=1, K=2, T=2)
    maps = LayerGradCam(model, "0")(x, torch.tensor([0])).maps
    # alpha = [(1+3)/2, (-2+0)/2] = [2, -1]; map = 2*[1, 2] - 1*[3, -1] = [-1, 5] -> ReLU [0, 5]
    assert torch.equal(maps, torch.tensor([[0.0, 5.0]]))


@pytest.mark.parametrize("one_d", [False, True])
@pytest.mark.parametrize("method", CAM_METHODS)
@pytest.mark.parametrize("target", CAM_TARGETS)
def test_closed_form_equals_autograd(one_d, method, target):
    # In float64: the layer's activations are signed (LeakyReLU), so XGrad-CAM's division by a
    # channel's activation sum cancels, and the autograd path's float32 rounding error grows there.
    for seed in range(3):
        model = gap_model(one_d=one_d, seed=seed).double()
        x = torch.randn(16, 2, *((11,) if one_d else (7, 5)), dtype=torch.float64)
        y = torch.randint(0, 4, (16,))
        closed = LayerGradCam(model, "3", path="closed_form", method=method, target=target)(x, y)
        auto = LayerGradCam(model, "3", path="autograd", method=method, target=target)(x, y)
        assert closed.maps.shape == (16, *x.shape[2:])
        assert relative_error(closed.maps, auto.maps) < 1e-5
        assert torch.allclose(closed.logits, auto.logits)


def reference_target(target: str, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Each sample's target, from its definition: z_y, z_y - max_{j != y} z_j, log softmax_y."""
    rows = torch.arange(len(y))
    if target == "class":
        return logits[rows, y]
    if target == "margin":
        others = logits.clone()
        others[rows, y] = -torch.inf
        return logits[rows, y] - others.max(1).values
    return logits.log_softmax(1)[rows, y]


def reference_gradcam(
    model: nn.Sequential,
    layer_index: int,
    x,
    y,
    target: str = "class",
    method: str = "gradcam",
    rectify: bool = True,
):
    """Independent Grad-CAM (or XGrad-CAM): run the layers by hand, keep A, full autograd.grad of
    the target; the ReLU at the end unless not ``rectify``."""
    activations = x
    for module in model[: layer_index + 1]:
        activations = module(activations)
    activations = activations.detach().requires_grad_(True)
    out = activations
    for module in model[layer_index + 1 :]:
        out = module(out)
    (grads,) = torch.autograd.grad(reference_target(target, out, y).sum(), activations)
    if method == "xgradcam":  # Fu et al. 2020: the gradient averaged with the activations' weights
        total = activations.sum(dim=(2, 3), keepdim=True)
        alpha = (grads * activations).sum(dim=(2, 3), keepdim=True) / torch.where(total == 0, 1.0, total)
    else:
        alpha = grads.mean(dim=(2, 3), keepdim=True)
    signed = (alpha * activations).sum(1).detach()
    return torch.relu(signed) if rectify else signed


@pytest.mark.parametrize("path", ["piecewise", "autograd"])
@pytest.mark.parametrize("target", CAM_TARGETS)
@pytest.mark.parametrize("method", ["gradcam", "xgradcam"])
def test_mlp_head_paths_equal_independent_reference(path, target, method):
    model = mlp_head_model()
    x = torch.randn(32, 1, 8, 8)
    y = torch.randint(0, 5, (32,))
    cam = LayerGradCam(model, "4", path=path, target=target, method=method)
    assert cam.path == path and not cam.closed_form
    expected = reference_gradcam(model, 4, x, y, target, method)
    assert relative_error(cam(x, y).maps, expected) < 1e-5


@pytest.mark.parametrize(
    ("factory", "layer", "path"),
    [
        (lambda: gap_model(), 3, "closed_form"),
        (lambda: gap_model(), 3, "autograd"),
        (mlp_head_model, 4, "piecewise"),
        (mlp_head_model, 4, "autograd"),
    ],
)
@pytest.mark.parametrize("target", CAM_TARGETS)
@pytest.mark.parametrize("method", ["gradcam", "xgradcam"])
def test_signed_maps_equal_the_reference_before_its_relu(factory, layer, path, target, method):
    """``rectify=False`` keeps the evidence against the target (negative), on every path."""
    model = factory()
    torch.manual_seed(1)
    x = torch.randn(32, model[0].in_channels, 8, 8)
    y = torch.randint(0, model[-1].out_features, (32,))
    signed = LayerGradCam(model, str(layer), path=path, target=target, method=method, rectify=False)
    assert signed.path == path
    maps = signed(x, y).maps
    expected = reference_gradcam(model, layer, x, y, target, method, rectify=False)
    assert (expected < 0).any() and relative_error(maps, expected) < 1e-5
    rectified = LayerGradCam(model, str(layer), path=path, target=target, method=method)(x, y).maps
    assert torch.allclose(rectified, maps.relu())


@pytest.mark.parametrize("method", ["xgradcam", "gradcam"])
@pytest.mark.parametrize("target", CAM_TARGETS)
def test_closed_form_xgradcam_weighs_a_channel_summing_to_zero_0(target, method):
    # Signed activations can cancel: XGrad-CAM's share of such a channel is 0/0, taken as 0, so
    # the closed form must zero that channel's weight (Grad-CAM keeps it).
    model = nn.Sequential(nn.Identity(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 3)).eval()
    x = torch.rand(4, 2, 2, 2)
    x[:, 0] = torch.tensor([[1.0, -1.0], [-2.0, 2.0]])  # channel 0 sums to exactly 0
    y = torch.tensor([0, 1, 2, 0])
    closed = LayerGradCam(model, "0", method=method, target=target)
    assert closed.path == "closed_form"
    auto = LayerGradCam(model, "0", path="autograd", method=method, target=target)
    assert relative_error(closed(x, y).maps, auto(x, y).maps) < 1e-5


@pytest.mark.parametrize("target", CAM_TARGETS)
def test_xgradcam_gives_dead_channels_no_weight(target):
    # A channel that is zero everywhere has no activation share: XGrad-CAM's 0/0 weight is 0, and
    # the closed form and the pool shortcut must not divide by it.
    for model, layer in ((gap_model(), "3"), (piecewise_heads()["lenet-like"].eval(), "1")):
        x = torch.randn(8, 2, 6, 6)
        y = torch.randint(0, 4, (8,))
        with torch.no_grad():  # the conv before the layer's activation: channel 0 is 0 everywhere
            model[int(layer) - 1].weight[0].zero_()
            model[int(layer) - 1].bias[0] = 0.0
        auto = LayerGradCam(model, layer, path="autograd", method="xgradcam", target=target)(x, y)
        fast = LayerGradCam(model, layer, method="xgradcam", target=target)(x, y)
        assert torch.isfinite(fast.maps).all()
        assert relative_error(fast.maps, auto.maps) < 1e-5


def piecewise_heads() -> dict[str, nn.Sequential]:
    """Heads the piecewise path runs by hand, behind a conv + ReLU layer at index 1."""
    trunk = (nn.Conv2d(2, 4, 3, padding=1), nn.ReLU())
    trunk_1d = (nn.Conv1d(2, 4, 3, padding=1), nn.ReLU())
    return {
        "lenet-like": nn.Sequential(
            *trunk,
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(36, 12),
            nn.ReLU(),
            nn.Dropout(),
            nn.Linear(12, 5),
        ),
        "overlapping padded pool": nn.Sequential(
            *trunk,
            nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True),
            nn.Identity(),
            nn.Flatten(),
            nn.Linear(64, 5),
        ),
        "pool after a ReLU": nn.Sequential(
            *trunk, nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(36, 5)
        ),
        "GAP + MLP": nn.Sequential(
            *trunk, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 5)
        ),
        "1-D": nn.Sequential(
            *trunk_1d, nn.MaxPool1d(2), nn.Flatten(), nn.Linear(12, 7), nn.ReLU(), nn.Linear(7, 5)
        ),
    }


@pytest.mark.parametrize("name", sorted(piecewise_heads()))
@pytest.mark.parametrize("method", CAM_METHODS)
@pytest.mark.parametrize("target", CAM_TARGETS)
def test_piecewise_equals_autograd(name, method, target):
    torch.manual_seed(0)
    model = piecewise_heads()[name].eval()
    x = torch.randn(16, 2, *((6,) if name == "1-D" else (6, 6)))
    y = torch.randint(0, 5, (16,))
    piecewise = LayerGradCam(model, "1", method=method, target=target)
    assert piecewise.path == "piecewise"
    auto = LayerGradCam(model, "1", path="autograd", method=method, target=target)
    got, expected = piecewise(x, y), auto(x, y)
    assert relative_error(got.maps, expected.maps) < 1e-5
    assert torch.allclose(got.logits, expected.logits) and torch.allclose(got.logits, model(x))
    single = piecewise(x[3:4], y[3:4]).maps
    assert torch.allclose(single[0], got.maps[3], rtol=1e-5, atol=1e-6)


class ScaledLinear(nn.Linear):
    def forward(self, x):
        return 2 * super().forward(x)


@pytest.mark.parametrize(
    "tail",
    [
        [nn.Flatten(), nn.Linear(144, 5), nn.Softmax(1)],
        [nn.Flatten(), nn.Linear(144, 8), nn.LeakyReLU(), nn.Linear(8, 5)],
        [nn.Flatten(), ScaledLinear(144, 5)],
        [nn.MaxPool2d(2, return_indices=True), nn.Flatten(), nn.Linear(36, 5)],
    ],
    ids=["softmax", "leaky", "subclass", "pool-indices"],
)
def test_heads_not_piecewise_linear_take_autograd(tail):
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), *tail).eval()
    assert LayerGradCam(model, "1").path == "autograd"
    with pytest.raises(DripModelError, match="path='piecewise' needs"):
        LayerGradCam(model, "1", path="piecewise")


def test_piecewise_path_honours_hooks_added_on_the_head_later():
    model = mlp_head_model()
    x, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    cam = LayerGradCam(model, "4")
    plain = cam(x, y).maps
    handle = model[6].register_forward_hook(lambda module, inputs, output: 3 * output)
    try:
        assert torch.allclose(cam(x, y).maps, 3 * plain, rtol=1e-5, atol=1e-7)
    finally:
        handle.remove()
    assert torch.equal(cam(x, y).maps, plain)


@pytest.mark.parametrize("factory", [lambda: gap_model(), mlp_head_model])
def test_batch_of_one_equals_row_of_batch(factory):
    model = factory()
    layer = "3" if isinstance(model[-1], nn.Linear) and model[-1].in_features == 6 else "4"
    x = torch.randn(64, *((2, 6, 6) if layer == "3" else (1, 8, 8)))
    y = torch.randint(0, 4, (64,))
    cam = LayerGradCam(model, layer)
    batch = cam(x, y).maps
    for i in (0, 17, 63):
        single = cam(x[i : i + 1], y[i : i + 1]).maps
        assert torch.allclose(single[0], batch[i], rtol=1e-5, atol=1e-6)


def hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


class UnusedBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Linear(4, 2)
        self.spare = nn.ReLU()

    def forward(self, x):
        return self.head(x)


class Exploding(nn.Module):
    def forward(self, x):
        raise RuntimeError("boom inside the model")


@pytest.mark.parametrize("path", ["closed_form", "autograd"])
@pytest.mark.parametrize("training", [False, True])
def test_no_side_effects_on_model(path, training):
    model = gap_model()
    model.train(training)
    model[0].weight.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    cam = LayerGradCam(model, "3", path=path)
    cam(torch.randn(4, 2, 5, 5), torch.tensor([0, 1, 2, 3]))
    assert hook_count(model) == 0
    assert model.training is training
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    assert torch.is_grad_enabled()


@pytest.mark.parametrize("path", ["closed_form", "autograd"])
def test_hooks_removed_and_grad_mode_restored_after_exception(path):
    model = nn.Sequential(
        nn.Conv2d(2, 3, 1),
        nn.ReLU(),
        Exploding(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(3, 2),
    )
    cam = LayerGradCam(model, "1", head="5", path=path)
    with torch.no_grad(), pytest.raises(RuntimeError, match="boom"):
        cam(torch.randn(2, 2, 3, 3), torch.tensor([0, 1]))
    assert hook_count(model) == 0
    assert torch.is_grad_enabled()


@pytest.mark.parametrize("training", [False, True])
def test_piecewise_path_has_no_side_effects_on_model(training):
    model = mlp_head_model().train(training)
    model[0].weight.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    cam = LayerGradCam(model, "4", path="piecewise")
    result = cam(torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 3]))
    assert not result.maps.is_inference() and not result.logits.is_inference()
    assert model.training is training and [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters()) and torch.is_grad_enabled()


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_works_inside_no_grad_and_inference_mode(context):
    model = mlp_head_model()
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 5, (8,))
    expected = LayerGradCam(model, "4")(x, y).maps
    with context():
        got = LayerGradCam(model, "4")(x, y).maps
    assert torch.allclose(got, expected)


def test_inplace_activation_after_the_layer_is_harmless():
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(3 * 4 * 4, 2))
    x, y = torch.randn(3, 1, 6, 6), torch.tensor([0, 1, 0])
    maps = LayerGradCam(model, "0")(x, y).maps
    assert maps.shape == (3, 4, 4)
    assert torch.isfinite(maps).all()


def test_predicted_class_when_no_classes_given():
    model = gap_model()
    x = torch.randn(5, 2, 4, 4)
    cam = LayerGradCam(model, "3")
    result = cam(x)
    assert torch.allclose(result.maps, cam(x, result.logits.argmax(1)).maps)


def test_gap_head_is_detected_only_where_it_holds():
    model = digits_cnn()
    assert find_gap_linear_head(model, model.relu3) is model.fc
    assert find_gap_linear_head(model, model.relu2) is None  # a conv follows
    assert find_gap_linear_head(mlp_head_model(), mlp_head_model()[4]) is None
    assert LayerGradCam(model, "relu3").closed_form


def test_wrong_declared_head_is_refused():
    model = mlp_head_model()
    model.drip_head = "8"  # a linear layer, but not after GAP of layer 4
    with pytest.raises(DripModelError, match="head"):
        LayerGradCam(model, "4", path="closed_form")(torch.randn(2, 1, 8, 8), torch.tensor([0, 1]))


def test_layer_errors_are_clear():
    model = gap_model()
    with pytest.raises(DripModelError, match="no module named"):
        LayerGradCam(model, "nope")
    with pytest.raises(DripModelError, match="not a module inside"):
        LayerGradCam(model, nn.ReLU())
    shared = nn.ReLU()
    twice = nn.Sequential(
        nn.Conv2d(1, 2, 1), shared, nn.Conv2d(2, 2, 1), shared, nn.Flatten(), nn.Linear(8, 2)
    )
    with pytest.raises(DripModelError, match="more than once"):
        LayerGradCam(twice, shared)(torch.randn(1, 1, 2, 2), torch.tensor([0]))
    unused = UnusedBranch()
    with pytest.raises(DripModelError, match="did not run"):
        LayerGradCam(unused, "spare")(torch.randn(1, 4), torch.tensor([0]))


@settings(max_examples=25, deadline=None)
@given(
    batch=st.integers(1, 9),
    height=st.integers(1, 6),
    width=st.integers(1, 6),
    scale=st.floats(1e-3, 1e3),
)
def test_maps_are_nonnegative_and_paths_agree_for_any_size(batch, height, width, scale):
    model = gap_model()
    x = torch.randn(batch, 2, height, width) * scale
    y = torch.randint(0, 4, (batch,))
    closed = LayerGradCam(model, "3", path="closed_form")(x, y).maps
    auto = LayerGradCam(model, "3", path="autograd")(x, y).maps
    assert (closed >= 0).all()
    assert torch.allclose(closed, auto, rtol=1e-4, atol=1e-6 * float(auto.abs().max().clamp_min(1)))


@pytest.mark.parametrize("path", ["closed_form", "autograd"])
def test_dense_layer_without_positions_and_empty_batches(path):
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Identity(), nn.Linear(4, 2))
    model.drip_head = "3"  # a (B, K) layer: |S| = 1, the closed form still holds
    cam = LayerGradCam(model, "1", path=path)
    x = torch.randn(5, 3)
    maps = cam(x, torch.zeros(5, dtype=torch.long)).maps
    activations = torch.relu(model[0](x))
    assert torch.allclose(maps, torch.relu(activations @ model[3].weight[0]), atol=1e-6)
    assert cam(torch.randn(0, 3), torch.zeros(0, dtype=torch.long)).maps.shape == (0,)


@pytest.mark.parametrize("factory,layer", [(gap_model, "3"), (mlp_head_model, "4")])
def test_nothing_of_a_call_outlives_it(factory, layer):
    """No activations, gradients or graphs are kept: every tensor the layer produced is freed."""
    model = factory()
    cam = LayerGradCam(model, layer)
    produced = []
    watcher = cam.layer.register_forward_hook(lambda m, i, o: produced.append(weakref.ref(o)))
    x = torch.randn(8, *((2, 6, 6) if layer == "3" else (1, 8, 8)))
    for _ in range(5):
        result = cam(x, torch.zeros(8, dtype=torch.long))
        assert result.maps.grad_fn is None and result.logits.grad_fn is None
        assert not result.maps.requires_grad and not result.logits.requires_grad
    watcher.remove()
    del result
    gc.collect()
    assert len(produced) == 5 and all(ref() is None for ref in produced)


def layer_hooks_during_call(model: nn.Module, layer: nn.Module, cam: LayerGradCam, x, y) -> int:
    """How many forward hooks ``layer`` has while ``cam`` runs (seen from a pre-hook of ours)."""
    seen = []
    handle = layer.register_forward_pre_hook(lambda module, inputs: seen.append(len(module._forward_hooks)))
    try:
        cam(x, y)
    finally:
        handle.remove()
    return seen[0]


@pytest.mark.parametrize(
    ("factory", "layer", "shape"), [(gap_model, "3", (2, 6, 6)), (mlp_head_model, "4", (1, 8, 8))]
)
def test_plain_sequential_runs_its_children_without_a_hook_and_gives_the_same_maps(factory, layer, shape):
    # A hook costs a small model 13% of its forward at batch 1: a plain Sequential is run child by
    # child instead, unless its own hooks would then be skipped.
    model = factory()
    x, y = torch.randn(5, *shape), torch.tensor([0, 1, 2, 3, 0])
    cam = LayerGradCam(model, layer)
    assert layer_hooks_during_call(model, model[int(layer)], cam, x, y) == 0
    direct = cam(x, y).maps
    handle = model.register_forward_hook(lambda module, inputs, output: None)
    try:
        assert layer_hooks_during_call(model, model[int(layer)], cam, x, y) == 1
        assert torch.equal(cam(x, y).maps, direct)
    finally:
        handle.remove()


def test_hooks_of_the_model_itself_are_honoured():
    model = mlp_head_model()
    x, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    cam = LayerGradCam(model, "4")
    plain = cam(x, y).maps
    handle = model.register_forward_hook(lambda module, inputs, output: 3 * output)
    try:
        assert torch.allclose(cam(x, y).maps, 3 * plain)
    finally:
        handle.remove()
    calls = []
    handle = register_module_forward_hook(lambda module, inputs, output: calls.append(module))
    try:
        assert torch.equal(cam(x, y).maps, plain)
    finally:
        handle.remove()
    assert model in calls  # torch's global module hooks see the model called, as without drip


@pytest.mark.parametrize(
    ("factory", "layer", "shape"),
    [
        (lambda: gap_model(seed=2), "3", (2, 7, 5)),
        (lambda: gap_model(one_d=True, seed=2), "3", (2, 11)),
        (mlp_head_model, "4", (1, 8, 8)),
    ],
    ids=["gap-2d", "gap-1d", "mlp-head"],
)
def test_label_maps_equal_captums_layer_gradcam(factory, layer, shape):
    """The paper's Grad-CAM (class target) against captum's, on every path drip takes."""
    captum = pytest.importorskip("captum.attr")
    model = factory()
    x = torch.randn(12, *shape)
    y = torch.randint(0, 4, (12,))
    module = model.get_submodule(layer)
    expected = captum.LayerGradCam(model, module).attribute(x, target=y, relu_attributions=True)
    for path in ("auto", "autograd"):
        maps = LayerGradCam(model, layer, path=path)(x, y).maps
        assert relative_error(maps, expected[:, 0].detach()) < 1e-5, path


def test_margin_rivals_found_in_python_equal_the_tensor_path():
    # Small batches find the rival in Python, larger ones with argmax: the same rows, ties included
    # (integer logits tie often; both take the first strongest rival).
    from drip.cam import _margin_coefficients, target_logit_gradient

    torch.manual_seed(0)
    logits = torch.randint(0, 3, (40, 5)).float()
    y = torch.randint(0, 5, (40,))
    expected = target_logit_gradient("margin", logits, y)
    assert torch.equal(_margin_coefficients(logits, y, 1.0, logits), expected)
    assert torch.equal(_margin_coefficients(logits, y, 0.25, logits.double()), expected.double() * 0.25)


@pytest.mark.parametrize("method", ["gradcam", "xgradcam"])
def test_margin_maps_agree_across_batch_sizes(method):
    # Batch 64 x 4 classes takes the tensor path for the rivals, one sample the Python path.
    model = gap_model()
    x = torch.randn(64, 2, 7, 5)
    y = torch.randint(0, 4, (64,))
    cam = LayerGradCam(model, "3", method=method, target="margin")
    batch = cam(x, y).maps
    singles = torch.cat([cam(x[i : i + 1], y[i : i + 1]).maps for i in range(64)])
    assert torch.allclose(batch, singles, rtol=1e-5, atol=1e-7)
    reference = LayerGradCam(model, "3", path="autograd", method=method, target="margin")(x, y).maps
    assert relative_error(batch, reference) < 1e-4


@pytest.mark.parametrize(
    ("factory", "layer", "path", "expected"),
    [
        (gap_model, "3", "auto", "closed_form"),
        (gap_model, "3", "autograd", "autograd"),
        (gap_model, "1", "auto", "autograd"),  # a conv follows the layer
        (mlp_head_model, "4", "auto", "piecewise"),
        (mlp_head_model, "4", "autograd", "autograd"),
    ],
)
def test_path_names_the_route_chosen_once(factory, layer, path, expected):
    model = factory()
    cam = LayerGradCam(model, layer, path=path)
    route = cam.route
    assert cam.path == route.path == expected
    assert (cam.head is not None) == cam.closed_form == (expected == "closed_form")
    assert (cam.piecewise_head is not None) == (expected == "piecewise")
    x = torch.randn(2, *((2, 6, 6) if factory is gap_model else (1, 8, 8)))
    cam(x, torch.tensor([0, 1]))
    assert cam.route is route and cam.path == expected
