"""The README tells the truth: its commands exist, its configuration table is current."""

from __future__ import annotations

import re
from pathlib import Path

from scripts.settings_doc import render

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_first_code_block_starts_the_system_then_runs_the_tests():
    block = re.search(r"```(?:bash)?\n(.*?)```", README, re.S)
    assert block is not None
    commands = [line.split("#")[0].strip() for line in block.group(1).splitlines()
                if line.strip()]
    assert commands == ["bash scripts/dev.sh", "bash scripts/test.sh"]
    for command in commands:
        assert (ROOT / command.split()[1]).is_file()


def test_ci_runs_the_readme_test_command():
    assert "bash scripts/test.sh" in (ROOT / ".ci" / "run").read_text()


def test_configuration_table_matches_the_settings():
    assert render(README) == README, "run: uv run python -m scripts.settings_doc --write"
