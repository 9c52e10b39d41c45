"""The README stays in step with the code: its links, scripts and registered names exist."""

from __future__ import annotations

import re
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import pytest

from guardnet.recipes import list_guards
from guardnet.weights import list_pretrained, load_config

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


DOCS = sorted((ROOT / "docs").glob("*.md"))


@pytest.mark.parametrize("page", [ROOT / "README.md", *DOCS], ids=lambda p: p.name)
def test_relative_links_resolve(page: Path) -> None:
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)\s]*)?\)", page.read_text())
    local = [t for t in targets if "://" not in t]
    assert local, f"{page.name} links no local files: the pattern no longer matches"
    missing = [t for t in local if not (page.parent / t).exists()]
    assert not missing, f"{page.name} links missing files: {missing}"


def test_readme_links_the_docs() -> None:
    missing = [p.name for p in DOCS if f"](docs/{p.name}" not in README]
    assert not missing, f"docs pages the README never links: {missing}"


@pytest.mark.parametrize("page", [ROOT / "README.md", *DOCS], ids=lambda p: p.name)
def test_named_benchmark_scripts_exist(page: Path) -> None:
    text = page.read_text()
    scripts = set(re.findall(r"benchmarks/([\w-]+\.py)", text))
    missing = sorted(s for s in scripts if not (ROOT / "benchmarks" / s).is_file())
    assert not missing, f"{page.name} names benchmark scripts that do not exist: {missing}"
    # scripts/ is gone: only a `git show <commit>:scripts/...` may still name it.
    stale = re.findall(r"(?<![\w:])scripts/[\w-]*\.?\w*", text)
    assert not stale, f"{page.name} names files under scripts/, which no longer exists: {stale}"


@pytest.mark.parametrize("entry", list_pretrained(), ids=lambda e: e.name)
def test_every_pretrained_weight_is_in_the_table(entry) -> None:
    assert f"| `{entry.name}` |" in README, f"{entry.name} is missing from 'Pretrained weights'"


def test_every_guard_recipe_is_mentioned() -> None:
    missing = [g.name for g in list_guards() if f"`{g.name}`" not in README]
    assert not missing, f"guard recipes the README never names: {missing}"


@pytest.mark.parametrize(
    "section",
    ["## Set-up", "## Evaluation: `guardnet eval`", "## Command line", "## Pretrained weights"],
)
def test_user_facing_sections_present(section: str) -> None:
    assert f"\n{section}" in README


@pytest.mark.parametrize("entry", list_pretrained(), ids=lambda e: e.name)
def test_the_table_states_each_models_headline_metric(entry) -> None:
    """One source for every figure: the README's row shows the config's headline metric."""
    config = load_config(entry.name)
    value = Decimal(str(config["metrics"][config["headline_metric"]])) * 100
    row = next(line for line in README.splitlines() if line.startswith(f"| `{entry.name}` |"))
    shown = {f"{value.quantize(Decimal(q), ROUND_HALF_UP)}%" for q in ("1", "0.1", "0.01")}
    assert any(text in row for text in shown), f"{entry.name}: none of {shown} in {row!r}"
