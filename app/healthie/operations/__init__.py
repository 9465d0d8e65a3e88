"""The GraphQL documents the engine sends, as committed ``.graphql`` files."""

from __future__ import annotations

from functools import cache
from importlib import resources


@cache
def load(name: str) -> str:
    """The text of ``operations/<name>.graphql``."""
    return resources.files(__package__).joinpath(f"{name}.graphql").read_text(encoding="utf-8")


def names() -> list[str]:
    """Every operation file's name, without extension."""
    return sorted(
        p.name.removesuffix(".graphql")
        for p in resources.files(__package__).iterdir()
        if p.name.endswith(".graphql")
    )
