"""Docs that match the code: every setting is described and appears in the README's table."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def _configuration_section() -> str:
    text = README.read_text()
    match = re.search(r"^## Configuration\n(.*?)(?=^## )", text, flags=re.S | re.M)
    assert match, "README.md has no '## Configuration' section"
    return match.group(1)


def test_every_setting_has_a_description() -> None:
    from core.settings import Settings

    missing = [name for name, field in Settings.model_fields.items() if not (field.description or "").strip()]
    assert not missing, f"settings without a description: {missing}"


def test_every_setting_is_in_the_readme_table() -> None:
    from core.settings import Settings

    table = _configuration_section()
    first_cells = [line.split("|")[1] for line in table.splitlines() if line.startswith("| `")]
    documented = {name for cell in first_cells for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", cell)}
    missing = sorted(name.upper() for name in Settings.model_fields if name.upper() not in documented)
    assert not missing, f"README's configuration table lacks: {missing}"
    unknown = sorted(documented - {name.upper() for name in Settings.model_fields} - {"HF_HUB_OFFLINE"})
    assert not unknown, f"README documents settings that do not exist: {unknown}"


def test_every_setting_and_code_named_in_security_md_exists() -> None:
    """SECURITY.md promises behaviour by setting names and error codes; a renamed one would make
    the promise point at nothing. Each `NAME` it quotes is a setting or occurs in the source."""
    from core.settings import Settings

    root = README.parent
    names = set(re.findall(r"`([A-Z][A-Z0-9_]{2,})`", (root / "SECURITY.md").read_text()))
    settings = {name.upper() for name in Settings.model_fields}
    source = "\n".join(path.read_text() for package in ("app", "auth", "core", "indexing", "retrieval", "tests")
                       for path in (root / package).rglob("*.py"))
    missing = sorted(name for name in names - settings if not re.search(rf"\b{name}\b", source))
    assert names and not missing, f"SECURITY.md names what the code does not have: {missing}"
