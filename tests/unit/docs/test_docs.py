"""The docs are the operator's reference: they must match the code they describe.

Each page under docs/ owns one topic; these tests tie the tables in it to the code (reason
codes, settings, metrics, modules, alerts) and check that every relative link resolves.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from consumer.contract.reasons import ReasonCode
from consumer.review.metrics import ReviewMetrics
from consumer.runtime.metrics import Metrics, TenantLabels
from consumer.runtime.settings import Settings
from tests.support.paths import DEPLOY, REPO_ROOT

DOCS = REPO_ROOT / "docs"
README = REPO_ROOT / "README.md"
README_MAX_LINES = 220
RUNBOOK_BASE = "https://github.com/modstream/modstream/blob/main/docs/operations.md"

_FENCE = re.compile(r"^\s*(```|~~~)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_ENV = re.compile(r"\bMODSTREAM_[A-Z0-9]+__[A-Z0-9_]+\b")
_MODULE_ROW = re.compile(r"^\|\s*`(consumer/[^`]+\.py)`\s*\|")


def _page(name: str) -> str:
    return (DOCS / name).read_text()


def _prose(text: str) -> list[str]:
    """The lines outside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*\*|__", "", heading).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _headings(text: str) -> list[tuple[int, str]]:
    found = []
    for line in _prose(text):
        match = _HEADING.match(line)
        if match:
            found.append((len(match.group(1)), match.group(2)))
    return found


def _anchors(text: str) -> set[str]:
    """Every anchor GitHub generates for the page, duplicates numbered as it does."""
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    for _, heading in _headings(text):
        slug = _slug(heading)
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def _section(text: str, title: str) -> str:
    """The lines under heading ``title``, up to the next heading of the same or a higher level."""
    lines = text.splitlines()
    start = level = None
    fenced = False
    for i, line in enumerate(lines):
        if _FENCE.match(line):
            fenced = not fenced
        match = None if fenced else _HEADING.match(line)
        if not match:
            continue
        if start is None and match.group(2) == title:
            start, level = i + 1, len(match.group(1))
        elif start is not None and level is not None and len(match.group(1)) <= level:
            return "\n".join(lines[start:i])
    assert start is not None, f"no section {title!r}"
    return "\n".join(lines[start:])


def _markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


# ── contract ─────────────────────────────────────────────────────────────────────────────


def test_every_reason_code_is_in_the_contract_table() -> None:
    table = _section(_page("contract.md"), "Reason codes")
    documented = set(re.findall(r"^\|\s*`([a-z0-9_]+)`\s*\|", table, re.MULTILINE))
    codes = {code.value for code in ReasonCode}
    assert not codes - documented, f"add to docs/contract.md: {sorted(codes - documented)}"
    assert not documented - codes, f"not a ReasonCode: {sorted(documented - codes)}"


# ── configuration ────────────────────────────────────────────────────────────────────────


def _setting_names() -> set[str]:
    names = set()
    for section, field in Settings.model_fields.items():
        model = field.annotation
        for name in model.model_fields:  # type: ignore[union-attr]
            names.add(f"MODSTREAM_{section.upper()}__{name.upper()}")
    return names


def test_every_setting_is_in_the_configuration_page() -> None:
    page = _page("configuration.md")
    missing = sorted(name for name in _setting_names() if f"`{name}`" not in page)
    assert not missing, f"add to docs/configuration.md: {missing}"


def test_no_page_names_a_setting_that_does_not_exist() -> None:
    settings = _setting_names()
    unknown = {
        f"{path.relative_to(REPO_ROOT)}: {name}"
        for path in _markdown_files()
        for name in _ENV.findall(path.read_text())
        if name not in settings
    }
    assert not unknown, sorted(unknown)


# ── operations ───────────────────────────────────────────────────────────────────────────


def _exposed_metric_names() -> set[str]:
    """Metric names as Prometheus shows them (counters with ``_total``, infos with ``_info``)."""
    suffix = {"counter": "_total", "info": "_info"}
    families = [
        *Metrics().registry.collect(),
        *ReviewMetrics(TenantLabels(1)).registry.collect(),
    ]
    return {family.name + suffix.get(family.type, "") for family in families}


def test_every_metric_is_in_the_operations_table() -> None:
    table = _section(_page("operations.md"), "Metrics")
    documented = set(re.findall(r"`(modstream_[a-z0-9_]+)`", table))
    names = _exposed_metric_names()
    assert not names - documented, f"add to docs/operations.md: {sorted(names - documented)}"
    assert not documented - names, f"not a metric: {sorted(documented - names)}"


def _alerts() -> list[dict[str, object]]:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yaml").read_text())
    return [rule for group in rules["groups"] for rule in group["rules"] if "alert" in rule]


def test_every_alert_has_a_runbook_section_its_url_points_at() -> None:
    operations = _page("operations.md")
    runbook = _section(operations, "Runbook")
    sections = {title for level, title in _headings(runbook) if level == 3}
    anchors = _anchors(operations)
    alerts = _alerts()
    assert alerts
    for alert in alerts:
        name = str(alert["alert"])
        assert name in sections, f"add a '### {name}' section to the runbook in docs/operations.md"
        annotations = alert["annotations"]
        assert isinstance(annotations, dict)
        url = annotations.get("runbook_url")
        assert url == f"{RUNBOOK_BASE}#{_slug(name)}", f"{name}: runbook_url is {url}"
        assert _slug(name) in anchors


def test_every_runbook_section_is_an_alert() -> None:
    runbook = _section(_page("operations.md"), "Runbook")
    sections = {title for level, title in _headings(runbook) if level == 3}
    assert sections == {str(alert["alert"]) for alert in _alerts()}


# ── architecture ─────────────────────────────────────────────────────────────────────────


def _documented_modules() -> list[str]:
    table = _section(_page("architecture.md"), "Module map")
    return [m.group(1) for line in table.splitlines() if (m := _MODULE_ROW.match(line))]


def _modules_on_disk() -> set[str]:
    """Every module of the service package; subpackage ``__init__.py`` files are left out
    (they hold nothing), the package's own ``consumer/__init__.py`` is its public surface."""
    package = REPO_ROOT / "consumer"
    found = set()
    for path in package.rglob("*.py"):
        relative = path.relative_to(REPO_ROOT).as_posix()
        if path.name == "__init__.py" and path.parent != package:
            continue
        found.add(relative)
    return found


def test_module_map_lists_each_module_once() -> None:
    documented = _documented_modules()
    assert documented
    duplicates = sorted({m for m in documented if documented.count(m) > 1})
    assert not duplicates


def test_every_module_is_in_the_module_map() -> None:
    missing = sorted(_modules_on_disk() - set(_documented_modules()))
    assert not missing, f"add to the module map in docs/architecture.md: {missing}"


def test_every_module_in_the_module_map_exists() -> None:
    absent = sorted(set(_documented_modules()) - _modules_on_disk())
    assert not absent, f"in docs/architecture.md but not in consumer/: {absent}"


# ── links and size ───────────────────────────────────────────────────────────────────────


def _relative_links(path: Path) -> list[str]:
    links = []
    for line in _prose(path.read_text()):
        # Code spans may hold brackets and parentheses that are not links.
        for target in _LINK.findall(re.sub(r"`[^`]*`", "", line)):
            if not re.match(r"^[a-z][a-z0-9+.-]*:", target):
                links.append(target)
    return links


@pytest.mark.parametrize(
    "page", _markdown_files(), ids=lambda p: p.relative_to(REPO_ROOT).as_posix()
)
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for link in _relative_links(page):
        target, _, anchor = link.partition("#")
        resolved = (page.parent / target).resolve() if target else page
        if not resolved.exists():
            broken.append(f"{link}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved.read_text()):
            broken.append(f"{link}: no such heading")
    assert not broken, broken


def test_readme_stays_short() -> None:
    lines = len(README.read_text().splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move detail to docs/"


def test_readme_links_every_docs_page() -> None:
    readme = README.read_text()
    missing = sorted(p.name for p in DOCS.glob("*.md") if f"(docs/{p.name})" not in readme)
    assert not missing, f"link from README.md: {missing}"
