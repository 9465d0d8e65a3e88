"""The image, checked statically (no image is built here): its base pinned by digest, a
non-root user, only runtime dependencies (``requirements.runtime.lock``: the closure of
pyproject's runtime dependencies, each pinned as in ``requirements.lock``, no dev tool), and no
sandbox, tests, integrations, instructions or plans in it (the Dockerfile copies none and the
build context excludes them); ``serve`` runs as PID 1 in exec form, so SIGTERM reaches it."""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import distribution

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.helpers import REPO

DOCKERFILE = REPO / "Dockerfile"
RUNTIME_LOCK = REPO / "requirements.runtime.lock"
DEV_ONLY = {
    "pytest",
    "pytest-timeout",
    "hypothesis",
    "ruff",
    "mypy",
    "moto",
    "mongomock",
    "cfn-lint",
}
NOT_IN_IMAGE = ("sandbox", "tests", "config", "prompts", "bench", ".healthie-sync", ".venv")


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def args() -> dict[str, str]:
    return dict(
        rest.split("=", 1) for word, rest in instructions() if word == "ARG" and "=" in rest
    )


def lock(path) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.strip().split("==")
            pins[canonicalize_name(name)] = version
    return pins


def test_base_image_is_pinned_by_digest():
    values = args()
    froms = [rest.split()[0] for word, rest in instructions() if word == "FROM"]
    assert froms
    for image in froms:
        image = re.sub(r"\$\{(\w+)\}", lambda m: values[m.group(1)], image)
        assert re.fullmatch(r"[\w./-]+:[\w.-]+@sha256:[0-9a-f]{64}", image), image


def test_runs_as_a_non_root_user_in_exec_form():
    users = [rest for word, rest in instructions() if word == "USER"]
    assert users, "no USER: the container would run as root"
    assert users[-1].split(":")[0] not in {"root", "0"}
    cmd = [rest for word, rest in instructions() if word == "CMD"][-1]
    assert cmd.startswith("["), "shell-form CMD puts a shell in front of SIGTERM"
    assert "serve" in cmd


def test_copies_no_sandbox_tests_or_integrations():
    copied = []
    for word, rest in instructions():
        if word in {"COPY", "ADD"} and "--from=" not in rest:
            parts = [p for p in rest.split() if not p.startswith("--")]
            copied += parts[:-1]
    assert copied
    for source in copied:
        assert (REPO / source).exists(), f"COPY of a missing file: {source}"
        assert not source.startswith(NOT_IN_IMAGE), f"{source} must not be in the image"
        assert source not in {".", "./"}, "copying the whole context copies tests and config"
    assert "requirements.lock" not in copied, "the full lock installs the dev tools"
    assert "requirements.runtime.lock" in copied


def test_build_context_excludes_everything_else():
    ignore = (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
    rules = [line.strip() for line in ignore if line.strip() and not line.startswith("#")]
    assert rules[0] == "*", "an allow-list keeps secrets and state out of the context"
    allowed = {r.lstrip("!").rstrip("/") for r in rules if r.startswith("!")}
    assert not allowed & set(NOT_IN_IMAGE)


def test_runtime_lock_is_the_runtime_closure_of_the_full_lock():
    runtime, full = lock(RUNTIME_LOCK), lock(REPO / "requirements.lock")
    assert not DEV_ONLY & set(runtime), DEV_ONLY & set(runtime)
    for name, version in runtime.items():
        assert full.get(name) == version, f"{name}=={version} differs from requirements.lock"
    # every runtime dependency (and what it needs, markers applied) is pinned
    deps = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "dependencies"
    ]
    todo, seen = [Requirement(d) for d in deps], set()
    while todo:
        req = todo.pop()
        key = (canonicalize_name(req.name), frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        assert key[0] in runtime, f"{req.name} is needed at run time but not in the runtime lock"
        for text in distribution(req.name).requires or []:
            sub = Requirement(text)
            if sub.marker is None or any(
                sub.marker.evaluate({"extra": e}) for e in (req.extras or {""})
            ):
                todo.append(sub)
    assert set(runtime) == {name for name, _ in seen}, "the runtime lock pins more than needed"
