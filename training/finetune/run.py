"""One comparison: heads on the frozen backbone against heads trained with the last blocks.

Three methods are scored on the same test images:

* ``frozen``: the existing heads fit (logistic regression per category) on the frozen
  backbone's embedding: today's heads;
* ``finetuned``: the heads trained jointly with the last blocks, on the tuned embedding;
* ``finetuned_refit``: the existing heads fit redone on the tuned embedding, which is what
  ``modstream train heads`` would serve after the tuned backbone is exported (heads are
  always rebuilt on the backbone that serves them).

The winner rule is fixed in advance: fine-tuning wins when the paired image-bootstrap 95%
interval of ``finetuned - frozen`` macro PR-AUC lies above 0.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from training.finetune.compare import baseline_heads, compare, drift, linear_scores
from training.finetune.joint import Heads, JointConfig, head_scores, run_tail, train_joint
from training.finetune.split import SplitBackbone
from training.heads.fit import FitConfig
from training.nsfwjs.models import CLASS_NAMES

logger = logging.getLogger(__name__)

Floats = npt.NDArray[np.float32]
Bools = npt.NDArray[np.bool_]
FROZEN, FINETUNED, REFIT = "frozen", "finetuned", "finetuned_refit"
DIFFERENCE = f"{FINETUNED} - {FROZEN}"


@dataclass(frozen=True)
class Inputs:
    """Stem activations and labels of each part; labels are ``[N, K]`` in category order."""

    categories: tuple[str, ...]
    train: Floats
    train_labels: Bools
    test: Floats
    test_labels: Bools
    test_groups: tuple[str, ...]
    drift: Floats
    drift_names: tuple[str, ...]


def fine_tune_wins(results: dict[str, Any]) -> bool:
    low = results["differences"][DIFFERENCE]["image_bootstrap"]["macro"]["low"]
    return low is not None and low > 0


def _drift_sets(
    inputs: Inputs, before: dict[str, Floats], after: dict[str, Floats], names: Sequence[str]
) -> dict[str, Any]:
    test_names = [f"test:{i}" for i in range(len(inputs.test))]
    found = {
        "reference_images": drift(names, before["drift"], after["drift"], CLASS_NAMES),
        "test_split": drift(test_names, before["test"], after["test"], CLASS_NAMES),
    }
    found["test_split"].pop("per_image")
    return found


def compare_methods(
    backbone: SplitBackbone,
    inputs: Inputs,
    cfg: JointConfig,
    *,
    fit: FitConfig | None = None,
    draws: int = 1000,
) -> tuple[dict[str, Any], Heads]:
    """Fit the baseline, train jointly, and score every method; the tail is tuned in place."""
    fit = fit or FitConfig(seed=cfg.seed)
    before = {
        part: run_tail(backbone, x)
        for part, x in (("train", inputs.train), ("test", inputs.test), ("drift", inputs.drift))
    }
    std, std_w, std_b, raw_w, raw_b = baseline_heads(before["train"][1], inputs.train_labels, fit)
    scores = {FROZEN: linear_scores(before["test"][1], raw_w, raw_b)}
    heads = Heads(std, std_w, std_b)
    history = train_joint(
        backbone, heads, inputs.train, inputs.train_labels, before["train"][0], cfg
    )
    after = {
        part: run_tail(backbone, x)
        for part, x in (("train", inputs.train), ("test", inputs.test), ("drift", inputs.drift))
    }
    scores[FINETUNED] = head_scores(heads, after["test"][1])
    _, _, _, refit_w, refit_b = baseline_heads(after["train"][1], inputs.train_labels, fit)
    scores[REFIT] = linear_scores(after["test"][1], refit_w, refit_b)
    results = compare(
        inputs.categories,
        inputs.test_labels,
        scores,
        reference=FROZEN,
        groups=inputs.test_groups,
        draws=draws,
        seed=cfg.seed,
    )
    report: dict[str, Any] = {
        "training": asdict(history),
        "joint_config": asdict(cfg),
        "results": results,
        "drift": _drift_sets(
            inputs,
            {part: probs for part, (probs, _) in before.items()},
            {part: probs for part, (probs, _) in after.items()},
            inputs.drift_names,
        ),
        "finetune_wins": fine_tune_wins(results),
    }
    return report, heads
