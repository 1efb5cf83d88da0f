"""Summarise a shadow run: how often the candidate heads would have decided like the live ones,
and where they would not — per tenant (action changes) and per category (rules firing)."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable
from typing import Any

from consumer.contract.events import ShadowComparison

Z_95 = 1.959963984540054


def wilson(k: int, n: int, z: float = Z_95) -> tuple[float, float] | None:
    """Wilson score interval of ``k`` successes in ``n`` trials (95% by default); None when
    ``n`` is 0."""
    if n <= 0:
        return None
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    p = k / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    # Clamp float noise at the ends (k = 0 or k = n give exactly 0 or 1).
    return max(0.0, centre - half), min(1.0, centre + half)


def summarize(comparisons: Iterable[ShadowComparison]) -> dict[str, Any]:
    """The shadow report: agreement with its interval, changes by tenant and by category.

    A category "gained" when its rule fires with the candidate but not live, "lost" the other
    way round.
    """
    by_version: Counter[tuple[str | None, str]] = Counter()
    changes: dict[str, Counter[str]] = defaultdict(Counter)
    tenants: Counter[str] = Counter()
    gained: Counter[str] = Counter()
    lost: Counter[str] = Counter()
    total = agree = 0
    # A redelivered event is compared again: count each event once, as last compared.
    latest = {item.event_id: item for item in comparisons}
    for item in latest.values():
        total += 1
        tenants[item.tenant_id] += 1
        by_version[(item.live_heads_version, item.shadow_heads_version)] += 1
        if item.live_action is item.shadow_action:
            agree += 1
        else:
            changes[item.tenant_id][f"{item.live_action.value}->{item.shadow_action.value}"] += 1
        live, shadow = set(item.live_categories), set(item.shadow_categories)
        gained.update(shadow - live)
        lost.update(live - shadow)
    interval = wilson(agree, total)
    return {
        "events": total,
        "agreement": agree / total if total else None,
        "agreement_95ci": list(interval) if interval is not None else None,
        "versions": [
            {"live": live, "shadow": shadow, "events": n}
            for (live, shadow), n in sorted(by_version.items(), key=lambda kv: str(kv[0]))
        ],
        "action_changes_by_tenant": {
            tenant: {
                "events": tenants[tenant],
                "changed": sum(counts.values()),
                "changes": dict(sorted(counts.items())),
            }
            for tenant, counts in sorted(changes.items())
        },
        "categories": {
            category: {"gained": gained[category], "lost": lost[category]}
            for category in sorted(set(gained) | set(lost))
        },
    }
