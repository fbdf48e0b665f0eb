"""Child process for the kill tests: streams samples through DripFilter into a SampleStore.

Usage: stream_child.py STORE LOG COUNT [READY_FILE]. Every sample is generated from its index
(``sample(i)``), so the parent can check stored bytes. After each kept decision the child appends
"index sample_id score" to LOG and fsyncs it, so LOG lists only promises the filter made.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch

from drip.filter import DripFilter
from drip.models import digits_cnn
from drip.score import DripScorer
from drip.store import SampleStore
from drip.thresholds import Thresholds, model_fingerprint


def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return digits_cnn().eval()


def sample(index: int) -> tuple[torch.Tensor, int]:
    generator = torch.Generator().manual_seed(index)
    return torch.rand(1, 8, 8, generator=generator), index % 10


def thresholds(scorer_model: torch.nn.Module) -> Thresholds:
    scorer = DripScorer(scorer_model)
    xs = torch.stack([sample(i)[0] for i in range(10_000, 10_200)])
    ys = torch.tensor([sample(i)[1] for i in range(10_000, 10_200)])
    return Thresholds.from_scores(
        scorer(xs, ys),
        ys,
        10,
        q_high=0.3,
        min_class_points=5,
        statistic="mean",
        layer=scorer.layer_name,
        model_fingerprint=model_fingerprint(scorer_model),
    )


def main() -> None:
    store_path, log_path, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    torch.set_num_threads(1)
    scorer_model = model()
    with SampleStore(store_path) as store, open(log_path, "a") as log:
        drip_filter = DripFilter(DripScorer(scorer_model), thresholds(scorer_model), store)
        if len(sys.argv) > 4:
            open(sys.argv[4], "w").close()
        for i in range(count):
            x, y = sample(i)
            decision = drip_filter.offer(x, y, source=f"s{i}")
            if decision.kept:
                log.write(f"{i} {decision.sample_id} {decision.score!r}\n")
                log.flush()
                os.fsync(log.fileno())


if __name__ == "__main__":
    main()
