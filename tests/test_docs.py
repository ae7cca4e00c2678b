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
