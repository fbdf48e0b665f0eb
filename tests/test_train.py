"""fit: exactly the step budget, seeded, eval mode after; evaluate: plain accuracy."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from drip.cam import target_logit_gradient
from drip.errors import DripInputError, DripModelError
from drip.models import digits_cnn
from drip.train import TrainConfig, evaluate, fit, park_outputs, parked_outputs, predict_logits


class CountingSGD(torch.optim.SGD):
    steps = 0

    def step(self, closure=None):
        CountingSGD.steps += 1
        return super().step(closure)


def test_exact_step_count_whatever_the_data_size(monkeypatch):
    monkeypatch.setattr(torch.optim, "AdamW", lambda params, lr, weight_decay: CountingSGD(params, lr=lr))
    for size in (3, 50, 500):
        CountingSGD.steps = 0
        x, y = torch.rand(size, 1, 8, 8), torch.randint(0, 10, (size,))
        history = fit(digits_cnn(), x, y, TrainConfig(steps=37, batch_size=16), progress=False, log_every=10)
        assert CountingSGD.steps == 37
        assert len(history.losses) == 4  # steps 10, 20, 30 and the last


def test_same_seed_same_model_and_global_rng_untouched():
    x, y = torch.rand(100, 1, 8, 8), torch.randint(0, 10, (100,))
    models = []
    for _ in range(2):
        torch.manual_seed(0)
        model = digits_cnn()
        state = torch.random.get_rng_state()
        fit(model, x, y, TrainConfig(steps=15), seed=3, progress=False)
        assert torch.equal(torch.random.get_rng_state(), state)
        models.append(model)
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        assert torch.equal(a, b)
    assert not models[0].training


def test_learns_a_separable_problem_and_evaluate_counts_correct():
    torch.manual_seed(0)
    x = torch.randn(200, 2)
    y = (x[:, 0] > 0).long()
    model = nn.Sequential(nn.Linear(2, 2))
    fit(model, x, y, TrainConfig(steps=200, lr=0.05), progress=False)
    assert evaluate(model, x, y) > 0.95
    logits = predict_logits(model, x)
    assert evaluate(model, x, y) == pytest.approx(float((logits.argmax(1) == y).float().mean()))


def test_bad_budget_and_data_are_refused():
    with pytest.raises(DripInputError, match="steps"):
        TrainConfig(steps=0)
    with pytest.raises(DripInputError, match="non-zero count"):
        fit(digits_cnn(), torch.rand(0, 1, 8, 8), torch.zeros(0, dtype=torch.long), progress=False)
    model = digits_cnn()
    before = {name: value.clone() for name, value in model.state_dict().items()}
    mode = model.training
    with pytest.raises(DripInputError, match=r"labels must lie in \[0, 10\)"):
        fit(model, torch.rand(4, 1, 8, 8), torch.tensor([0, 3, 10, 2]), progress=False)
    assert all(torch.equal(value, before[name]) for name, value in model.state_dict().items())
    assert model.training == mode


def _blobs(classes: list[int], per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Well separated Gaussian blobs in 2-D, one per class, centred on a circle."""
    generator = torch.Generator().manual_seed(seed)
    angles = torch.tensor(classes, dtype=torch.float32) * (2 * torch.pi / 3)
    centres = torch.stack([angles.cos(), angles.sin()], 1) * 3
    noise = 0.3 * torch.randn(len(classes) * per_class, 2, generator=generator)
    return centres.repeat_interleave(per_class, 0) + noise, torch.tensor(classes).repeat_interleave(per_class)


def test_a_class_the_training_set_lacks_is_not_pushed_down():
    """Cross-entropy over every output lowers the logit of a class with no samples without bound,
    and a later fine-tuning with that class present has to undo it first: on synthetic speech a
    class that arrived in a life's last round stayed at 0% in every arm. The loss is over the
    classes the training set holds, so the output of a lacking class gets no gradient at all."""
    torch.manual_seed(0)
    model = nn.Linear(2, 3)
    before = [p.detach().clone() for p in model.parameters()]
    x, y = _blobs([0, 1], 50, seed=1)
    fit(model, x, y, TrainConfig(steps=50, batch_size=20, weight_decay=0.0), progress=False)
    weight, bias = model.weight.detach(), model.bias.detach()
    assert torch.equal(weight[2], before[0][2]) and torch.equal(bias[2], before[1][2])
    assert not torch.equal(weight[:2], before[0][:2])


def test_a_class_arriving_late_is_learnt_in_a_short_fine_tuning():
    """With dropout the loss never reaches 0, so over every output a lacking class's logit kept
    sinking: 20 steps with the class present left it at 0% (100% with the loss masked)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3))
    x, y = _blobs([0, 1], 100, seed=1)
    fit(model, x, y, TrainConfig(steps=2000, batch_size=32), progress=False)
    x_new, y_new = _blobs([0, 1, 2], 100, seed=2)
    fit(model, x_new, y_new, TrainConfig(steps=20, batch_size=32, lr=1e-2), progress=False)
    x_test, y_test = _blobs([2], 200, seed=3)
    assert evaluate(model, x_test, y_test) > 0.9


def _rivals(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Each sample's rival in the DRIP score's margin, as the scorer picks it."""
    return target_logit_gradient("margin", logits, y).argmin(1)


def test_outputs_never_trained_are_parked_and_lose_every_comparison():
    """Masked, an untrained output keeps its initial weights, and its logit (a random projection
    of features training grew) was the margin's rival for most samples of a device that knew a
    few of its classes. Parked, it is never a rival nor a prediction."""
    x, y = _blobs([0, 1], 100, seed=1)
    rivals_outside = []
    for park in (False, True):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 6))
        fit(model, x, y, TrainConfig(steps=300, batch_size=32), progress=False, park_lacking=park)
        logits = predict_logits(model, x)
        rivals_outside.append(float((_rivals(logits, y) > 1).float().mean()))
    assert rivals_outside[0] > 0.5  # what parking is for: without it, most rivals are untrained
    assert rivals_outside[1] == 0
    assert parked_outputs(model).tolist() == [False, False, True, True, True, True]
    assert int(predict_logits(model, torch.randn(500, 2) * 5).argmax(1).max()) <= 1


def test_a_parked_output_is_learnt_when_its_class_arrives_from_its_initial_weights():
    """From a zero weight row a new class learnt slower than from its initialisation (digits, 150
    steps a round: every arm 1.2 to 2.6 pp lower on average), so parking moves the bias alone."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 4))
    x, y = _blobs([0, 1], 100, seed=1)
    initial = model[2].weight.detach().clone()
    fit(model, x, y, TrainConfig(steps=300, batch_size=32), progress=False, park_lacking=True)
    # masked: no gradient, only AdamW's decay (1e-4 x lr a step)
    torch.testing.assert_close(model[2].weight[2:], initial[2:], rtol=1e-3, atol=0)
    x_new, y_new = _blobs([0, 1, 2], 100, seed=2)
    fit(model, x_new, y_new, TrainConfig(steps=100, batch_size=32, lr=1e-2), progress=False)
    assert parked_outputs(model).tolist() == [False, False, False, True]
    x_test, y_test = _blobs([2], 200, seed=3)
    assert evaluate(model, x_test, y_test) > 0.9


def test_fine_tuning_keeps_a_learnt_class_the_training_set_lacks():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 4))
    x, y = _blobs([0, 1, 2], 100, seed=1)
    fit(model, x, y, TrainConfig(steps=300, batch_size=32), progress=False, park_lacking=True)
    x_old, y_old = _blobs([0, 1], 100, seed=2)
    fit(model, x_old, y_old, TrainConfig(steps=20, batch_size=32), progress=False)
    assert parked_outputs(model).tolist() == [False, False, False, True]
    x_test, y_test = _blobs([2], 200, seed=3)
    assert evaluate(model, x_test, y_test) > 0.9


def test_parking_needs_a_linear_output_layer_and_refuses_before_training():
    model = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 4, bias=False))
    before = [p.detach().clone() for p in model.parameters()]
    x, y = _blobs([0, 1], 10, seed=1)
    with pytest.raises(DripModelError, match=r"nn\.Linear"):
        fit(model, x, y, TrainConfig(steps=5), progress=False, park_lacking=True)
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    with pytest.raises(DripModelError, match=r"nn\.Linear"):
        park_outputs(model, torch.tensor([False, False, True, True]))
    assert parked_outputs(model).tolist() == []


def test_park_outputs_takes_a_mask_and_refuses_indices():
    model = nn.Sequential(nn.Linear(2, 4))
    before = model[0].bias.detach().clone()
    for bad in (torch.tensor([2, 3]), torch.tensor([[True, False, True, False]]), [True, False, True, False]):
        with pytest.raises(DripInputError, match="boolean mask"):
            park_outputs(model, bad)
    assert torch.equal(model[0].bias, before)
    park_outputs(model, torch.tensor([False, False, True, True]))
    assert parked_outputs(model).tolist() == [False, False, True, True]
