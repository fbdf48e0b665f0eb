"""What a life is judged by: accuracy averaged over rounds, final accuracy, and forgetting.

* **average accuracy**: the mean over rounds of the test accuracy on the classes seen so far
  (what the device delivered over its life, not only at its end);
* **final accuracy**: after the last round;
* **forgetting** (Chaudhry et al., ECCV 2018): per class seen before the last round, its best
  accuracy in an earlier round minus its final accuracy, averaged over those classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def forgetting(class_accuracy: Sequence[dict[str, float]]) -> float | None:
    """Mean over the classes tested before the last round of best earlier minus final accuracy;
    None with fewer than two rounds."""
    if len(class_accuracy) < 2:
        return None
    final = class_accuracy[-1]
    drops = []
    for c, last in final.items():
        earlier = [round_[c] for round_ in class_accuracy[:-1] if c in round_]
        if earlier:
            drops.append(max(earlier) - last)
    return sum(drops) / len(drops) if drops else None


def summarise(rounds: Sequence[dict[str, Any]], arms: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per arm, over one seed's ``rounds`` (their records): the life's figures."""
    summary = {}
    for arm in arms:
        records = [r["arms"][arm] for r in rounds]
        accuracy = [r["accuracy"] for r in records]
        summary[arm] = {
            "average_accuracy": sum(accuracy) / len(accuracy),
            "final_accuracy": accuracy[-1],
            "forgetting": forgetting([r["class_accuracy"] for r in records]),
            "final_bytes": records[-1]["bytes"],
            "max_bytes": max(r["bytes"] for r in records),
            "trainings": sum(r["trainings"] for r in records),
            "train_s": sum(r["train_s"] for r in records),
            "stream_s": sum(r["stream_s"] for r in records),
        }
    return summary
