"""Hot reload of the policy file: a changed file takes effect without a restart.

A Kubernetes ConfigMap update swaps the mounted file atomically, so polling its content is
enough and works on every filesystem. An update that does not parse, validate, or fit the
served model's categories is refused with a logged reason, and the policy in force stays.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from consumer.errors import PolicyError
from consumer.metrics import Metrics
from consumer.policy import PolicySet, TopicRoutes, compile_policy, parse_policy

logger = logging.getLogger(__name__)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class PolicyWatcher:
    def __init__(
        self,
        path: Path,
        routes: TopicRoutes,
        *,
        categories: Callable[[], Sequence[str] | None],
        apply: Callable[[PolicySet], None],
        metrics: Metrics,
        initial_text: str,
    ) -> None:
        self._path = path
        self._routes = routes
        self._categories = categories
        self._apply = apply
        self._metrics = metrics
        self._seen = _digest(initial_text)

    async def run(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            await self.check()

    async def check(self) -> bool:
        """Apply the file if it changed and is valid; return whether a new policy applies."""
        try:
            text = await asyncio.to_thread(self._path.read_text, encoding="utf-8")
        except OSError as exc:
            # A ConfigMap swap can briefly hide the file; the next poll sees the new one.
            logger.warning(
                "cannot read policy file %s, keeping the policy in force: %s", self._path, exc
            )
            return False
        digest = _digest(text)
        if digest == self._seen:
            return False
        categories = self._categories()
        if categories is None:
            return False  # the model is not known yet; try again on the next poll
        self._seen = digest
        try:
            policies = compile_policy(parse_policy(text, str(self._path)), self._routes)
            policies.check_categories(categories)
        except PolicyError as exc:
            self._metrics.policy_reloads.labels("rejected").inc()
            logger.error("policy update refused, the previous policy stays in force: %s", exc)
            return False
        self._apply(policies)
        self._metrics.policy_reloads.labels("applied").inc()
        logger.info("policy %s in force, reloaded from %s", policies.version, self._path)
        return True
