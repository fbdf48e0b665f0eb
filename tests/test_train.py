"""fit: exactly the step budget, seeded, eval mode after; evaluate: plain accuracy."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from drip.errors import DripInputError
from drip.models import digits_cnn
from drip.train import TrainConfig, evaluate, fit, predict_logits


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
