"""The house rules the layout promises, checked on the source itself.

* no exception class is defined in the engine outside ``app/core/errors.py``;
* no engine module imports the sandbox (only ``app/cli/dev.py`` opens it, on demand), and
  importing every engine module loads no ``sandbox`` module;
* back-off and Retry-After parsing exist once (``app/resilience/retry.py``).
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO

ENGINE = ("app", "workers", "connectors")
ERRORS = REPO / "app" / "core" / "errors.py"
DEV_DOOR = REPO / "app" / "cli" / "dev.py"


def engine_files() -> list[Path]:
    return sorted(p for pkg in ENGINE for p in (REPO / pkg).rglob("*.py"))


def _is_exception_base(base: ast.expr) -> bool:
    name = base.attr if isinstance(base, ast.Attribute) else getattr(base, "id", "")
    return name.endswith(("Error", "Exception", "Exit")) or name in {
        "RateLimited",
        "UpstreamUnavailable",
        "InvalidResponse",
        "PatientNotFound",
        "FlushInProgress",
        "CircuitOpen",
        "ConflictingWrite",
        "WebhookRefused",
        "WebhookUrlRefused",
    }


def test_no_error_class_outside_the_errors_module():
    offenders = []
    for path in engine_files():
        if path == ERRORS:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and any(map(_is_exception_base, node.bases)):
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}")
    assert offenders == []


def test_every_error_in_the_tree_is_drawn_in_its_docstring():
    import app.core.errors as errors

    doc = errors.__doc__ or ""
    classes = [
        name
        for name, value in vars(errors).items()
        if isinstance(value, type) and issubclass(value, errors.HealthieSyncError)
    ]
    assert len(classes) > 10
    assert [c for c in classes if c not in doc] == []


def test_no_engine_module_imports_the_sandbox():
    offenders = []
    for path in engine_files():
        if path == DEV_DOOR:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            else:
                continue
            offenders += [
                f"{path.relative_to(REPO)}:{node.lineno}"
                for n in names
                if n == "sandbox" or n.startswith("sandbox.")
            ]
    assert offenders == []


def test_importing_the_whole_engine_loads_no_sandbox_module():
    modules = [
        ".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        for p in engine_files()
        if p.name != "__main__.py"
    ]
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "loaded = sorted(m for m in sys.modules if m == 'sandbox' or m.startswith('sandbox.'))\n"
        "print(loaded)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_the_cli_says_in_one_line_when_the_sandbox_is_absent(monkeypatch, capsys):
    import pytest
    import typer

    from app.cli import dev

    real = importlib.import_module

    def without_sandbox(name, *args, **kwargs):
        if name.startswith("sandbox"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr("app.cli.dev.importlib.import_module", without_sandbox)
    with pytest.raises(typer.Exit):
        dev.demo(patients=1, changes=0, seed=1, reset=False)
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "development tools" in err


def test_back_off_and_retry_after_are_written_once():
    # ``2 **`` / ``2.0 **`` (exponential back-off), a retry-after header read, tenacity and
    # Google's RPC retry exist only in the resilience layer.
    offenders = []
    for path in engine_files():
        if path.parent.name == "resilience":
            continue
        text = path.read_text(encoding="utf-8").lower()
        for needle in (
            "2.0 **",
            "2 **",
            "'retry-after'",
            '"retry-after"',
            "wait_exponential",
            "tenacity",
            "api_core.retry",
        ):
            if needle in text:
                offenders.append(f"{path.relative_to(REPO)}: {needle}")
    assert offenders == []
