"""Tenant and platform heads: categories learnt on top of the shared backbone's embedding.

A heads model (Triton model ``heads`` by default, one directory per version) scores every head
on the backbone's embedding in the same request as the backbone (the ``moderation`` ensemble).
Each version describes itself: every response carries its ``HeadsDescriptor`` as JSON, so the
consumer learns new categories the moment a new version serves, without a restart.

A head belongs to the platform (``tenant`` is None: any tenant may threshold it) or to one
tenant (only that tenant's decisions see its scores). A heads version records the backbone it
was trained on; served on another backbone its scores mean nothing, so it is refused.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from consumer.errors import ConfigError, ModelMismatch

logger = logging.getLogger(__name__)

HEAD_SCORES_OUTPUT = "head_scores"
HEADS_DESCRIPTOR_OUTPUT = "heads_descriptor"
BACKBONE_SHA_PARAMETER = "modstream.backbone_sha256"
HEADS_MODEL_PARAMETER = "modstream.heads_model"
BACKBONE_MODEL_PARAMETER = "modstream.backbone_model"

CategoryName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
TenantName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")]


class HeadCategory(BaseModel):
    """One head: a category name, and the tenant it belongs to (None: the platform's)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: CategoryName
    tenant: TenantName | None = None


class HeadsDescriptor(BaseModel):
    """What a heads version scores, and what it was trained on (``heads.json``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    heads_model: str
    version: str
    backbone: str
    """Triton name of the backbone whose embedding the heads read."""
    backbone_sha256: str
    """sha256 of the backbone's model file the heads were trained on."""
    embedding_dim: int = Field(gt=0)
    categories: tuple[HeadCategory, ...]
    trained_at: datetime
    summary: dict[str, float] = Field(default_factory=dict)
    """Held-out numbers per category (e.g. ``qr_solicitation.f1``), for operators."""

    def visible_to(self, tenant_id: str) -> list[int]:
        """Indexes of the heads a tenant's decisions see: the platform's and its own."""
        return [
            index
            for index, head in enumerate(self.categories)
            if head.tenant is None or head.tenant == tenant_id
        ]

    def names(self) -> tuple[str, ...]:
        return tuple(head.name for head in self.categories)

    def check_backbone(self, backbone_sha256: str | None) -> None:
        """Raise ModelMismatch unless these heads were trained on the served backbone."""
        if backbone_sha256 is None or backbone_sha256 != self.backbone_sha256:
            raise ModelMismatch(
                f"heads {self.heads_model} version {self.version} were trained on backbone "
                f"{self.backbone} sha256 {self.backbone_sha256[:12]}, but the served backbone "
                f"is sha256 {(backbone_sha256 or 'unknown')[:12]}; retrain the heads on the "
                "served backbone (modstream train heads) or promote a matching version"
            )


def check_unique(categories: Iterable[HeadCategory], builtin: Iterable[str]) -> None:
    """Raise ValueError when a head repeats a built-in category or another head's name."""
    seen = set(builtin)
    for head in categories:
        if head.name in seen:
            raise ValueError(
                f"head {head.name!r} repeats a category name; heads need names of their own "
                "(a tenant's head and a platform head cannot share one either)"
            )
        seen.add(head.name)


class LiveHeads:
    """The heads version serving now, learnt from responses; refuses versions that cannot be
    used (another backbone, a category the live policies cannot accept).

    ``accept`` is called with each response's raw descriptor and is cheap for the one already
    known. ``check`` raises PolicyError (or ModelMismatch) to refuse; ``on_change`` hears of
    every accepted new version.
    """

    def __init__(
        self,
        backbone_sha256: str | None,
        builtin: Iterable[str],
        check: Callable[[HeadsDescriptor], None],
        on_change: Callable[[HeadsDescriptor], None],
    ) -> None:
        self._backbone_sha256 = backbone_sha256
        self._builtin = tuple(builtin)
        self.serving: HeadsDescriptor | None = None
        """The version Triton answered with last, accepted or not: what a new policy must fit
        (a policy fixed for a refused version must not be judged by the older one)."""
        self._check = check
        self._on_change = on_change
        self._known: dict[bytes, HeadsDescriptor] = {}
        self.current: HeadsDescriptor | None = None

    def accept(self, raw: bytes) -> HeadsDescriptor:
        """The descriptor in ``raw``; raises ModelMismatch or PolicyError to refuse it."""
        known = self._known.get(raw)
        if known is not None:
            self.serving = known
            self._switch(known)
            return known
        try:
            descriptor = HeadsDescriptor.model_validate_json(raw)
        except ValidationError as exc:
            raise ModelMismatch(
                f"the heads model returned an unreadable descriptor: {exc}"
            ) from exc
        descriptor.check_backbone(self._backbone_sha256)
        try:
            check_unique(descriptor.categories, self._builtin)
        except ValueError as exc:
            raise ModelMismatch(f"heads version {descriptor.version}: {exc}") from exc
        self.serving = descriptor
        self._check(descriptor)
        # Only accepted versions are remembered: a refused one is checked again next time, so
        # fixing the policy (or promoting another version) is noticed without a restart.
        self._known[raw] = descriptor
        self._switch(descriptor)
        return descriptor

    def recheck(self) -> None:
        """Check the known versions again (the policies changed); forget refused ones."""
        for raw, descriptor in list(self._known.items()):
            try:
                self._check(descriptor)
            except ConfigError:
                del self._known[raw]

    def _switch(self, descriptor: HeadsDescriptor) -> None:
        if self.current is None or self.current.version != descriptor.version:
            logger.info(
                "heads %s version %s serving: %s",
                descriptor.heads_model,
                descriptor.version,
                ", ".join(f"{h.name} ({h.tenant or 'platform'})" for h in descriptor.categories),
            )
            self.current = descriptor
            self._on_change(descriptor)
