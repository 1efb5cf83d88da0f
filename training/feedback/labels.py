"""What a reviewer's verdict says about the heads: a positive, a negative, or nothing.

Rows of a heads training set are taken as complete (``training.heads.train``): a row is a
negative for every category it does not carry. So a verdict becomes a row only when the
reviewer's answer settles every head at once:

* ``category`` is a head the tenant sees (its own or a platform head): a positive for that
  head, whatever the action (a tenant may allow a category it only wants counted). The row
  is owned by the head's owner (the platform's heads have no tenant), as the trainer needs.
* ``allow`` without a category, or with a built-in category: the reviewer found nothing to
  act on, so the image is a negative for every head.
* ``block`` without a category: something is wrong with the image, but not which head (if
  any) it is: skipped, because a negative row would teach the heads that a blocked image
  is none of them.
* ``block`` with a built-in category (``sexual_explicit`` ...): the backbone's own classes
  decide those; the verdict says nothing about whether the image also shows, say, a contact
  overlay. Skipped for the same reason.
* a category that is neither built in nor a head this tenant sees (another tenant's head, a
  retired one): skipped with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from consumer.contract.events import Action, ReviewVerdict
from consumer.errors import ConfigError
from consumer.inference import ensemble
from consumer.moderation.heads import HeadCategory, HeadsDescriptor

CLASS_NAMES_PARAMETER = "modstream.class_names"


@dataclass(frozen=True)
class HeadCatalog:
    """The categories a verdict may name: the backbone's built-in classes and the heads."""

    builtin: frozenset[str]
    heads: tuple[HeadCategory, ...]
    heads_version: str | None = None

    def describe(self) -> dict[str, object]:
        return {
            "builtin": sorted(self.builtin),
            "heads": [head.model_dump() for head in self.heads],
            "heads_version": self.heads_version,
        }

    def visible(self, tenant_id: str) -> dict[str, HeadCategory]:
        return {
            head.name: head
            for head in self.heads
            if head.tenant is None or head.tenant == tenant_id
        }


@dataclass(frozen=True)
class VerdictLabel:
    """The labels one verdict gives its image (empty: a negative for every head)."""

    labels: frozenset[str]
    owner: str | None
    """The row's tenant: the head's owner for a positive, the verdict's tenant otherwise."""


@dataclass(frozen=True)
class Skipped:
    reason: str


def label_of(verdict: ReviewVerdict, catalog: HeadCatalog) -> VerdictLabel | Skipped:
    """The labels ``verdict`` gives its image, or why it gives none (see the module doc)."""
    category = verdict.category
    visible = catalog.visible(verdict.tenant_id)
    if category is not None and category in visible:
        return VerdictLabel(frozenset({category}), visible[category].tenant)
    if category is not None and category not in catalog.builtin:
        return Skipped(
            f"category {category!r} is neither a built-in category nor a head tenant "
            f"{verdict.tenant_id} sees"
        )
    if verdict.action == Action.ALLOW:
        return VerdictLabel(frozenset(), verdict.tenant_id)
    if category is None:
        return Skipped("block without a category: which head, if any, is not known")
    return Skipped(f"block for built-in category {category!r}: says nothing about the heads")


def catalog_of(repo: Path, backbone: str, heads_model: str, ensemble_name: str) -> HeadCatalog:
    """The built-in classes of ``backbone`` and the heads of the live heads version (the
    ensemble's pinned one, else the newest) in the model repository ``repo``.

    Raises ConfigError when the backbone's config cannot be read.
    """
    config = ensemble.read_config(repo / backbone / "config.pbtxt")
    names = ensemble.string_parameter(config, CLASS_NAMES_PARAMETER) or ""
    builtin = frozenset(name for name in names.split(",") if name)
    version = _live_heads_version(repo, heads_model, ensemble_name)
    if version is None:
        return HeadCatalog(builtin, ())
    path = repo / heads_model / version / "heads.json"
    try:
        descriptor = HeadsDescriptor.model_validate_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not a readable heads descriptor ({exc})") from exc
    return HeadCatalog(builtin, descriptor.categories, version)


def _live_heads_version(repo: Path, heads_model: str, ensemble_name: str) -> str | None:
    pinned = repo / ensemble_name / "config.pbtxt"
    if pinned.is_file():
        live = ensemble.live_version(ensemble.read_config(pinned))
        if live is not None:
            return live
    versions = ensemble.version_folders(repo / heads_model)
    return str(versions[-1]) if versions else None
