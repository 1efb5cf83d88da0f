"""The README is the operator's reference: it must list every reason code and setting."""

from __future__ import annotations

from consumer.contract.reasons import ReasonCode
from consumer.runtime.settings import Settings
from tests.support.paths import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text()


def test_every_dead_letter_reason_code_is_documented() -> None:
    missing = sorted(c for c in ReasonCode if f"`{c}`" not in README)
    assert not missing


def test_every_setting_is_documented() -> None:
    missing = []
    for section, field in Settings.model_fields.items():
        model = field.annotation
        for name in model.model_fields:  # type: ignore[union-attr]
            env = f"MODSTREAM_{section.upper()}__{name.upper()}"
            short = f"__{name.upper()}"
            if env not in README and f"{short}`" not in README and f"{short} " not in README:
                missing.append(env)
    assert not missing


def test_every_metric_is_documented() -> None:
    from consumer.runtime.metrics import Metrics

    names = {family.name for family in Metrics().registry.collect()}
    missing = sorted(name for name in names if f"`{name}" not in README)
    assert not missing, f"add these metrics to the README's metrics table: {missing}"
