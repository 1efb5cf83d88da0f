"""How closely a pruned model follows the unpruned one, and how much faster it runs.

Agreement is measured on outputs of the exported ONNX files (what Triton would serve):
the action each gives under the shipped policy's thresholds (``policies/default.yaml``: the
default rules and every tenant's), KL divergence on the five categories and top-class
agreement. Speed is onnxruntime images/s at batch 1 and 32, every model measured in the same
process in alternating rounds, so that load from other work on the machine hits all alike;
the median round counts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from consumer.contract.events import Action
from consumer.moderation.policy import PolicySet, TopicRoutes, load_policy, threshold_verdict
from consumer.moderation.shadow_report import wilson
from training.nsfwjs.models import CATEGORIES, CLASS_NAMES

logger = logging.getLogger(__name__)

BATCHES = (1, 32)
EPS = 1e-12


def open_session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_probs(
    session: ort.InferenceSession, pixels: npt.NDArray[np.uint8], batch: int = 32
) -> npt.NDArray[np.float64]:
    """The ``probs`` output for every image, as float64."""
    rows: list[npt.NDArray[np.float32]] = [
        session.run(["probs"], {"image": pixels[start : start + batch]})[0]
        for start in range(0, len(pixels), batch)
    ]
    return np.concatenate(rows).astype(np.float64)


def shipped_policy(path: Path) -> PolicySet:
    return load_policy(path, TopicRoutes("allow", "review", "block"))


def actions(probs: npt.NDArray[np.float64], policies: PolicySet, tenant: str) -> list[Action]:
    """The threshold verdict for each row (a tenant not in the file gets the default rules)."""
    rules = policies.rules_for(tenant)
    categories = [CATEGORIES[name] for name in CLASS_NAMES]
    return [
        threshold_verdict(rules, dict(zip(categories, map(float, row), strict=True))).action
        for row in probs
    ]


@dataclass(frozen=True)
class Flips:
    flips: int
    images: int
    teacher_actions: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        interval = wilson(self.flips, self.images)
        return {
            "flips": self.flips,
            "images": self.images,
            "flip_percent": round(100 * self.flips / max(self.images, 1), 2),
            "flip_percent_wilson95": None
            if interval is None
            else [round(100 * interval[0], 2), round(100 * interval[1], 2)],
            "unpruned_actions": self.teacher_actions,
        }


def count_flips(
    teacher: npt.NDArray[np.float64],
    student: npt.NDArray[np.float64],
    policies: PolicySet,
    tenant: str,
) -> Flips:
    before = actions(teacher, policies, tenant)
    after = actions(student, policies, tenant)
    counts = {action.value: sum(1 for a in before if a == action) for action in Action}
    return Flips(sum(1 for a, b in zip(before, after, strict=True) if a != b), len(before), counts)


def agreement(
    teacher: npt.NDArray[np.float64],
    student: npt.NDArray[np.float64],
    policies: PolicySet,
    tenants: Sequence[str],
) -> dict[str, Any]:
    """Flips per policy (``default`` first), KL(unpruned ‖ pruned) in nats, top-class match."""
    kl = np.sum(teacher * (np.log(teacher + EPS) - np.log(student + EPS)), axis=1)
    return {
        "action_flips": {
            tenant: count_flips(teacher, student, policies, tenant).to_dict()
            for tenant in ("default", *tenants)
        },
        "kl_mean": float(np.mean(kl)),
        "kl_max": float(np.max(kl)),
        "top_class_agreement": float(np.mean(teacher.argmax(1) == student.argmax(1))),
        "max_abs_prob_diff": float(np.max(np.abs(teacher - student))),
    }


def _images_per_second(
    session: ort.InferenceSession, images: npt.NDArray[np.uint8], seconds: float
) -> float:
    session.run(["probs"], {"image": images})
    count = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        session.run(["probs"], {"image": images})
        count += len(images)
    return count / (time.perf_counter() - started)


def measure_speed(
    models: dict[str, Path],
    image: npt.NDArray[np.uint8],
    *,
    threads: int,
    seconds: float,
    rounds: int,
) -> dict[str, dict[int, float]]:
    """Median images/s of each ONNX file at each batch size, rounds interleaved."""
    sessions = {name: open_session(path, threads) for name, path in models.items()}
    samples: dict[str, dict[int, list[float]]] = {n: {b: [] for b in BATCHES} for n in models}
    for _ in range(rounds):
        for batch in BATCHES:
            images = np.repeat(image[None], batch, axis=0)
            for name, session in sessions.items():
                samples[name][batch].append(_images_per_second(session, images, seconds))
    return {
        name: {batch: float(np.median(values)) for batch, values in per_batch.items()}
        for name, per_batch in samples.items()
    }
