"""DRIP score: the logit identity, the statistics on hand maps, validation of every input."""

from __future__ import annotations

import gc
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import gap_model, mlp_head_model
from hypothesis import given, settings
from hypothesis import strategies as st

from drip.cam import targets as cam_module
from drip.errors import DripInputError, DripModelError
from drip.models import digits_cnn, lenet
from drip.score import SIGNED_STATISTICS, STATISTICS, DripScorer, score_in_batches
from drip.validation import check_inputs, check_labels


def _identity_target(target: str, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """dt/dz of each target, computed here from its definition (not drip's helper)."""
    one_hot = torch.nn.functional.one_hot(y, logits.shape[1]).float()
    if target == "label":
        return one_hot
    if target == "margin":
        rivals = logits.masked_fill(one_hot.bool(), -torch.inf).argmax(1)
        return one_hot - torch.nn.functional.one_hot(rivals, logits.shape[1]).float()
    return one_hot - logits.softmax(1)


@pytest.mark.parametrize(
    ("target", "meaning"),
    [
        ("label", lambda z, y, r, p: z[range(len(y)), y]),  # the label's logit
        ("margin", lambda z, y, r, p: z[range(len(y)), y] - z[range(len(y)), r]),  # minus the rival's
        ("logprob", lambda z, y, r, p: z[range(len(y)), y] - (p * z).sum(1)),  # minus the mean logit
    ],
)
def test_net_score_is_the_targets_logit_form_and_mean_adds_what_relu_cut(target, meaning):
    """For a GAP + linear head, mean(map before ReLU) = (the target's logit form, biases removed)
    / |S|: label z_y; margin z_y - z_rival; logprob z_y - sum_j softmax_j z_j (softmax held fixed)."""
    torch.manual_seed(0)
    model = digits_cnn().eval()
    x, y = torch.rand(32, 1, 8, 8), torch.randint(0, 10, (32,))
    captured = {}
    handle = model.relu3.register_forward_hook(lambda m, i, o: captured.update(a=o.detach()))
    with torch.no_grad():
        logits = model(x)
    handle.remove()
    activations = captured["a"]  # (B, 64, 4, 4)
    positions = activations[0, 0].numel()
    seed = _identity_target(target, logits, y)
    pre_relu = torch.einsum("bk,bkhw->bhw", seed @ model.fc.weight, activations) / positions
    rivals = logits.masked_fill(torch.nn.functional.one_hot(y, 10).bool(), -torch.inf).argmax(1)
    probabilities = logits.softmax(1)
    unbiased = logits - model.fc.bias
    # The map before the ReLU has mean (the target's logit form, without biases) / |S| ...
    expected_mean = meaning(unbiased, y, rivals, probabilities) / positions
    assert torch.allclose(pre_relu.flatten(1).mean(1), expected_mean, atol=1e-6)
    # ... which is the net score (the signed map's mean) itself ...
    assert torch.allclose(DripScorer(model, target=target)(x, y), expected_mean, atol=1e-6)
    # ... while the mean of the ReLU'd map adds what the ReLU removed: evidence against the target.
    scores = DripScorer(model, statistic="mean", target=target)(x, y)
    expected = expected_mean + torch.relu(-pre_relu).flatten(1).mean(1)
    assert torch.allclose(scores, expected, atol=1e-6)


def _without_head_bias(model: torch.nn.Sequential) -> torch.nn.Sequential:
    model[-1].bias = None
    return model


def _without_biases(model: torch.nn.Sequential) -> torch.nn.Sequential:
    for module in model:
        if isinstance(module, torch.nn.Linear):
            module.bias = None
    return model


# (model, its target layer, its input): GAP + linear heads (closed form) and piecewise MLP heads.
MEANS_WITHOUT_MAP_CASES = {
    "custom-module": (lambda: digits_cnn().eval(), "relu3", (1, 8, 8)),
    "sequential": (lambda: gap_model(classes=10), "3", (2, 8, 8)),
    "head-without-bias": (lambda: _without_head_bias(gap_model(classes=10)), "3", (2, 8, 8)),
    "mlp-head": (lambda: mlp_head_model(), "4", (1, 8, 8)),
    "mlp-head-without-biases": (lambda: _without_biases(mlp_head_model()), "4", (1, 8, 8)),
    "lenet-pool-then-mlp": (lambda: lenet().eval(), "relu2", (1, 28, 28)),
}


@pytest.mark.parametrize("case", sorted(MEANS_WITHOUT_MAP_CASES))
@pytest.mark.parametrize("target", ["label", "margin", "logprob", "predicted"])
@pytest.mark.parametrize("cam", ["gradcam", "xgradcam"])
@pytest.mark.parametrize("batch", [1, 5, 40])  # 40 x 10 logits: the tensor path, not Python's
def test_net_scores_without_the_map_equal_the_signed_maps_mean(case, target, cam, batch):
    make_model, layer, shape = MEANS_WITHOUT_MAP_CASES[case]
    torch.manual_seed(1)
    model = make_model()
    scorer = DripScorer(model, layer, target=target, cam=cam)
    piecewise = scorer.cam.path == "piecewise"
    assert scorer.cam.means_without_map == (cam == "xgradcam" or not piecewise)
    classes = 4 if case.startswith("mlp") else 10
    x, y = torch.randn(batch, *shape), torch.randint(0, classes, (batch,))
    first = scorer.score_batch(x, y)  # the closed form's first call checks the head, measures |S|
    second = scorer.score_batch(x, y)
    maps = scorer.heatmaps(x, y)
    expected = maps.flatten(1).mean(1)
    scale = expected.abs().max()
    for batch_scores in (first.scores, second.scores):
        assert torch.allclose(batch_scores, expected, rtol=1e-5, atol=1e-6 * scale)
    assert torch.equal(second.logits, first.logits)
    assert torch.allclose(second.maps, maps)  # computed when read
    assert all(t.grad_fn is None and not t.requires_grad for t in (second.scores, second.logits))


def test_net_scores_without_the_map_follow_the_layers_size_when_the_input_size_changes():
    model = gap_model(classes=10)  # fully convolutional: |S| is the input's size
    scorer = DripScorer(model, "3")
    for size in (8, 6, 8, 11):
        x, y = torch.randn(3, 2, size, size), torch.tensor([0, 4, 9])
        scorer(x, y)
        assert torch.allclose(scorer(x, y), scorer.heatmaps(x, y).flatten(1).mean(1), rtol=1e-5, atol=1e-6)


def test_a_samples_net_score_is_the_same_bits_on_its_first_call_and_by_either_route(monkeypatch):
    # A resumed stream's first batch meets a fresh scorer: its scores must equal those of the
    # uninterrupted run, whose scorer had been called before (a store compares them bit for bit).
    x, y = torch.rand(5, 1, 8, 8), torch.tensor([0, 3, 9, 9, 1])
    torch.manual_seed(0)
    model = digits_cnn().eval()
    first = DripScorer(model)(x, y)
    scorer = DripScorer(model)
    scorer(x, y)
    assert torch.equal(scorer(x, y), first)
    many, labels = 40 * torch.rand(300, 1, 8, 8), torch.arange(300) % 10  # logits far from the biases
    for target in ("label", "margin"):
        scorer = DripScorer(model, target=target)
        monkeypatch.setattr(cam_module, "_PYTHON_MARGIN_LOGITS", 10**9)
        by_python = scorer(many, labels)
        monkeypatch.setattr(cam_module, "_PYTHON_MARGIN_LOGITS", 0)
        assert torch.equal(scorer(many, labels), by_python)  # the tensors' route


def test_which_scores_need_no_map():
    model = digits_cnn().eval()
    assert DripScorer(model).cam.means_without_map
    assert not DripScorer(model, statistic="mean").cam.means_without_map  # ReLU'd: needs the map
    assert not DripScorer(model, cam="gradcam++").cam.means_without_map
    assert not DripScorer(model, path="autograd").cam.means_without_map
    assert DripScorer(mlp_head_model(), "4").cam.means_without_map  # piecewise, XGrad-CAM
    assert not DripScorer(mlp_head_model(), "4", cam="gradcam").cam.means_without_map
    assert not DripScorer(mlp_head_model(), "3").cam.means_without_map  # a signed layer (the conv)


def test_default_target_is_the_margin():
    model = gap_model()
    x, y = torch.randn(16, 2, 5, 5), torch.randint(0, 4, (16,))
    assert DripScorer(model, "3").target == "margin"
    assert torch.equal(DripScorer(model, "3")(x, y), DripScorer(model, "3", target="margin")(x, y))
    with pytest.raises(DripInputError, match="target"):
        DripScorer(model, "3", target="loss")


def test_statistics_on_hand_maps():
    maps = torch.tensor(
        [
            [[0.0, 4.0], [0.0, 0.0]],  # all heat in one place
            [[1.0, 1.0], [1.0, 1.0]],  # uniform
            [[0.0, 0.0], [0.0, 0.0]],  # empty
            [[2.0, 1.0], [0.9, 0.0]],
        ]
    )
    assert STATISTICS["mean"](maps).tolist() == [1.0, 1.0, 0.0, pytest.approx(0.975)]
    assert STATISTICS["max"](maps).tolist() == [4.0, 1.0, 0.0, 2.0]
    assert STATISTICS["sum"](maps).tolist() == [4.0, 4.0, 0.0, pytest.approx(3.9)]
    entropy = STATISTICS["entropy"](maps)
    p = torch.tensor([2.0, 1.0, 0.9]) / 3.9
    assert entropy[0] == 0.0 and entropy[2] == 0.0
    assert entropy[1] == pytest.approx(math.log(4))
    assert entropy[3] == pytest.approx(float(-(p * p.log()).sum()))
    # coverage: strictly above half the peak (the 1.0 beside a peak of 2.0 does not count)
    assert STATISTICS["coverage"](maps).tolist() == [0.25, 1.0, 0.0, 0.25]


def test_layer_by_name_or_module_and_default_from_model():
    model = digits_cnn().eval()
    x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    by_default = DripScorer(model)(x, y)
    assert torch.equal(DripScorer(model, "relu3")(x, y), by_default)
    assert torch.equal(DripScorer(model, model.relu3)(x, y), by_default)
    assert DripScorer(model).layer_name == "relu3"
    with pytest.raises(DripModelError, match="drip_layer"):
        DripScorer(mlp_head_model())


def test_heatmaps_have_the_layer_shape_without_upsampling():
    scorer = DripScorer(digits_cnn().eval())
    maps = scorer.heatmaps(torch.rand(3, 1, 8, 8), torch.tensor([1, 2, 3]))
    assert maps.shape == (3, 4, 4)


def test_label_target_differs_from_predicted_target():
    model = gap_model()
    x = torch.randn(64, 2, 5, 5)
    predicted = model(x).argmax(1)
    wrong = (predicted + 1) % 4
    by_label = DripScorer(model, "3", target="label")(x, wrong)
    by_prediction = DripScorer(model, "3", target="predicted")(x, wrong)
    assert torch.equal(by_prediction, DripScorer(model, "3", target="label")(x, predicted))
    assert not torch.allclose(by_label, by_prediction)


@pytest.mark.parametrize(
    ("x", "y", "match"),
    [
        (torch.rand(2, 1, 7, 8), [0, 1], r"expected shape \(B, 1, 8, 8\)"),
        (torch.randint(0, 9, (2, 1, 8, 8)), [0, 1], "floating-point"),
        (torch.rand(2, 1, 8, 8).bool(), [0, 1], "floating-point"),
        (torch.rand(2, 1, 8, 8, dtype=torch.complex64), [0, 1], "floating-point"),
        (torch.full((2, 1, 8, 8), float("nan")), [0, 1], "NaN or infinite"),
        (torch.full((2, 1, 8, 8), float("inf")), [0, 1], "NaN or infinite"),
        (torch.rand(2, 1, 8, 8), [0, 10], "out of range"),
        (torch.rand(2, 1, 8, 8), [-1, 0], "out of range"),
        (torch.rand(2, 1, 8, 8), [0, 1, 2], "3 labels for 2 samples"),
        (torch.rand(2, 1, 8, 8), [0.0, 1.0], "integer class labels"),
        (torch.rand(2, 1, 8, 8), [True, False], "integer class labels"),
        ("pixels", [0], "expected a tensor"),
    ],
)
def test_bad_input_raises_drip_input_error_naming_the_problem(x, y, match):
    scorer = DripScorer(digits_cnn().eval())
    with pytest.raises(DripInputError, match=match):
        scorer(x, y)


def test_numpy_lists_float64_and_channels_last_are_accepted():
    scorer = DripScorer(digits_cnn().eval())
    x = torch.rand(3, 1, 8, 8)
    y = [1, 2, 3]
    expected = scorer(x, y)
    assert torch.allclose(scorer(x.numpy(), np.array(y)), expected)
    assert torch.allclose(scorer(x.double(), torch.tensor(y, dtype=torch.int32)), expected, atol=1e-6)
    assert torch.allclose(scorer(x.tolist(), y), expected)
    assert torch.allclose(scorer(x.to(memory_format=torch.channels_last), y), expected, atol=1e-6)
    assert torch.allclose(scorer(x.transpose(2, 3).contiguous().transpose(2, 3), y), expected, atol=1e-6)


def test_score_in_batches_equals_one_big_batch():
    scorer = DripScorer(digits_cnn().eval())
    x, y = torch.rand(70, 1, 8, 8), torch.randint(0, 10, (70,))
    scores, logits = score_in_batches(scorer, x, y, batch_size=16)
    assert torch.allclose(scores, scorer(x, y), atol=1e-6)
    assert logits.shape == (70, 10)


def test_training_mode_model_warns_once():
    model = digits_cnn()  # fresh modules are in training mode
    scorer = DripScorer(model)
    with pytest.warns(UserWarning, match="training mode"):
        scorer(torch.rand(1, 1, 8, 8), [0])
    assert model.training


@settings(max_examples=30, deadline=None)
@given(
    values=st.lists(st.floats(-1e4, 1e4, allow_nan=False, width=32), min_size=64, max_size=64),
    label=st.integers(0, 9),
    statistic=st.sampled_from(sorted(STATISTICS)),
)
def test_scores_are_finite_for_any_finite_input_and_nonnegative_unless_signed(values, label, statistic):
    scorer = DripScorer(digits_cnn().eval(), statistic=statistic)
    x = torch.tensor(values, dtype=torch.float32).reshape(1, 1, 8, 8)
    score = scorer(x, [label])
    assert score.shape == (1,)
    assert torch.isfinite(score).all()
    assert statistic in SIGNED_STATISTICS or (score >= 0).all()


def live_tensors(shape: tuple[int, ...] | None = None) -> int:
    """Tensors alive in the process (of ``shape``, if given), after a full collection."""
    gc.collect()
    tensors = [o for o in gc.get_objects() if issubclass(type(o), torch.Tensor)]
    return sum(shape is None or t.shape == shape for t in tensors)


@pytest.mark.parametrize(
    ("factory", "layer", "activation_shape"),
    [(gap_model, "3", (7, 6, 5, 5)), (mlp_head_model, "4", (7, 8, 4, 4))],
)
def test_repeated_calls_keep_no_activations_or_graphs(factory, layer, activation_shape):
    # A scorer runs on every sample of a stream: memory must not grow with calls, and nothing of a
    # call (the layer's activations, their gradients, the graph) may outlive it.
    model = factory()
    scorer = DripScorer(model, layer)
    x = torch.randn(7, *((2, 5, 5) if factory is gap_model else (1, 8, 8)))
    y = torch.tensor([0, 1, 2, 3, 0, 1, 2])
    batch = scorer.score_batch(x, y)
    assert all(t.grad_fn is None and not t.requires_grad for t in (batch.maps, batch.logits, batch.scores))
    del batch
    assert live_tensors(activation_shape) == 0
    before = live_tensors()
    for _ in range(20):
        scorer(x, y)
        scorer.heatmaps(x, y)
    assert live_tensors() <= before


@pytest.mark.parametrize("labels", [[0, 1, 2], torch.tensor([0, 1, 2])])  # the general and the steady route
def test_closed_form_hands_back_ordinary_tensors(labels):
    # The closed form runs under inference mode; what it returns must still be usable as any tensor.
    model = digits_cnn().eval()
    scorer = DripScorer(model)
    x = torch.rand(3, 1, 8, 8)
    scorer(x, labels)  # the steady route needs a verified head
    batch = scorer.score_batch(x, labels)
    for tensor in (batch.maps, batch.logits, batch.scores):
        assert not tensor.is_inference()
        tensor.mul_(2)  # in place: refused for inference tensors outside inference mode


def _steady_scorer(target: str = "margin") -> tuple[DripScorer, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    scorer = DripScorer(digits_cnn().eval(), target=target)
    x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 3, 9, 9])
    scorer(x, y)  # verifies the closed form for this input shape
    return scorer, x, y


def test_a_stream_of_model_ready_tensors_skips_the_general_checks(monkeypatch):
    # The device's case: a few samples as tensors already of the model's dtype, device and shape.
    # The steady route must really be taken, or the bit-for-bit checks below would compare one
    # route with itself.
    scorer, x, y = _steady_scorer()
    expected = scorer.score_batch(x.tolist(), y.tolist()).scores
    monkeypatch.setattr(DripScorer, "prepare", lambda *args: pytest.fail("prepare ran"))
    assert torch.equal(scorer(x, y), expected)
    assert torch.allclose(scorer(x[:1], y[:1]), expected[:1], rtol=1e-5)  # batch 1's kernels differ
    assert scorer.score_batch(x, y).model_logits.is_inference()  # copied only when read


@settings(max_examples=40, deadline=None)
@given(
    batch=st.integers(1, 40),  # past _STEADY_BATCH and past Python's 128 logits
    scale=st.sampled_from([1e-3, 1.0, 300.0]),
    target=st.sampled_from(["label", "margin", "predicted", "logprob"]),
    seed=st.integers(0, 2**16),
)
def test_the_steady_route_gives_the_general_routes_bits(batch, scale, target, seed):
    # A list or an array goes through prepare; the same samples as model-ready tensors do not.
    scorer, _, _ = _steady_scorer(target)
    generator = torch.Generator().manual_seed(seed)
    x = scale * torch.rand(batch, 1, 8, 8, generator=generator)
    y = torch.randint(0, 10, (batch,), generator=generator)
    steady, general = scorer.score_batch(x, y), scorer.score_batch(x.numpy(), y.tolist())
    assert torch.equal(steady.scores, general.scores)
    assert torch.equal(steady.logits, general.logits)
    assert torch.equal(steady.maps, general.maps)


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")
def test_the_steady_route_leaves_every_mistake_to_the_general_checks():
    scorer, x, y = _steady_scorer()
    with pytest.raises(DripInputError, match="label 10 is out of range"):
        scorer(x, torch.tensor([0, 1, 2, 10]))
    with pytest.raises(DripInputError, match="label -1 is out of range"):
        scorer(x, torch.tensor([0, 1, 2, -1]))
    with pytest.raises(DripInputError, match=r"samples \[2\] contain NaN"):
        scorer(torch.where(torch.arange(4)[:, None, None, None] == 2, math.nan, x), y)
    with pytest.raises(DripInputError, match=r"expected shape \(B, 1, 8, 8\)"):
        scorer(x[..., :7], y)
    with pytest.raises(DripInputError, match="3 labels for 4 samples"):
        scorer(x, y[:3])
    with pytest.raises(DripInputError, match="sparse"):
        scorer(x.to_sparse(), y)
    with pytest.raises(DripInputError, match="nested"):
        scorer(torch.nested.nested_tensor(list(x)), y)
    # A bound wider than the head's classes (thresholds of another model): the head says no.
    with pytest.raises(DripInputError, match=r"classes: expected values in \[0, 10\)"):
        scorer.score_batch(x, torch.tensor([0, 1, 2, 11]), num_classes=12)
    # Tensors the model needs converted still score as the model's own dtype would.
    assert torch.equal(scorer(x.double(), y.int()), scorer(x, y))
    scorer.model.train()
    with pytest.warns(UserWarning, match="training mode"):
        scorer(x, y)


@pytest.mark.parametrize("overwrite", [False, True])
def test_inputs_follow_the_model_when_it_changes_dtype(overwrite):
    model = digits_cnn().eval()
    scorer = DripScorer(model)
    previous = torch.__future__.get_overwrite_module_params_on_conversion()
    torch.__future__.set_overwrite_module_params_on_conversion(overwrite)  # new Parameter objects
    try:
        model.double()
    finally:
        torch.__future__.set_overwrite_module_params_on_conversion(previous)
    batch = scorer.score_batch(torch.rand(2, 1, 8, 8), [3, 4])
    assert batch.x.dtype == batch.maps.dtype == torch.float64


def test_finite_inputs_whose_sum_overflows_are_accepted():
    # Finiteness is checked on the sum first; an overflowing sum of finite values must not be
    # mistaken for a NaN or an infinity.
    huge = torch.full((3, 4), 3e38)
    assert check_inputs(huge) is huge
    huge[1, 2] = float("inf")
    with pytest.raises(DripInputError, match=r"samples \[1\] contain NaN or infinite"):
        check_inputs(huge)
    with pytest.raises(DripInputError, match=r"samples \[0\] contain NaN or infinite"):
        check_inputs(torch.tensor([[float("inf"), float("-inf")]]))  # sum NaN, not inf


@pytest.mark.parametrize("count", [1, 32, 33, 300])
def test_label_range_is_checked_at_every_batch_size(count):
    # Small batches are range-checked in Python, large ones with one reduction.
    labels = torch.arange(count) % 10
    assert torch.equal(check_labels(labels, count=count, num_classes=10), labels)
    for bad, message in ((10, "label 10 is out of range"), (-1, "label -1 is out of range")):
        wrong = labels.clone()
        wrong[count // 2] = bad
        with pytest.raises(DripInputError, match=message):
            check_labels(wrong, count=count, num_classes=10)


def test_scoring_imports_nothing_heavy():
    # Scoring runs on small devices. Handing autograd.grad a grad_outputs tensor made torch import
    # its symbolic-shapes module, and with it sympy (+37 MiB RSS, ~1 s), on the first scored batch.
    code = (
        "import sys, torch\n"
        "from drip import DripScorer\n"
        "from drip.models import MODELS\n"
        "for name in ('lenet', 'digits_cnn'):\n"
        "    model = MODELS[name]().eval()\n"
        "    DripScorer(model)(torch.rand(2, *model.input_shape), [0, 1])\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'sympy')[:3])\n"
    )
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert found.stdout.strip() == "[]"
