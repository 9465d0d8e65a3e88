"""The README's commands section matches the command line: every command the CLI has is in the
table, and every command the table names exists (so neither drifts from the other)."""

from __future__ import annotations

import re

import typer.main

from app.cli.main import cli
from tests.helpers import REPO


def cli_commands() -> set[str]:
    root = typer.main.get_command(cli)
    assert hasattr(root, "commands")  # a group (typer's own click-compatible type)
    found: set[str] = set()
    for name, command in root.commands.items():
        if hasattr(command, "commands"):
            found |= {f"{name} {sub}" for sub in command.commands}
        else:
            found.add(name)
    return found


def readme_commands() -> set[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("## Commands", 1)[1].split("\n## ", 1)[0]
    found: set[str] = set()
    for row in section.splitlines():
        if not row.startswith("| `"):
            continue
        first_cell = row.split(" | ", 1)[0]
        for span in re.findall(r"`([^`]+)`", first_cell):
            words = span.removeprefix("healthie-sync ").replace("\\|", "|").split()
            path: list[str] = []
            for word in words:
                if not re.fullmatch(r"[a-z][a-z|-]*", word):
                    break  # an argument (INTEGRATION), an option or a bracket
                path.append(word)
            if path and "|" in path[-1]:
                found |= {" ".join([*path[:-1], alt]) for alt in path[-1].split("|")}
            elif path:
                found.add(" ".join(path))
    return found


def test_the_readme_lists_every_command_and_no_other():
    documented, real = readme_commands(), cli_commands()
    assert real - documented == set(), "commands missing from the README's table"
    assert documented - real == set(), "the README names commands the CLI does not have"


def test_every_toml_example_in_the_readme_parses():
    import tomllib

    text = (REPO / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```toml\n(.*?)```", text, re.S)
    assert len(blocks) >= 3
    for block in blocks:
        tomllib.loads(block)  # raises with the line of the first mistake
