"""``cloudbuild.yaml`` is a build Cloud Build accepts and one that deploys what the issue asks:
valid YAML with Cloud Build's schema essentials (steps with a builder name, unique ids, waitFor
naming earlier steps), every file it names present in the repository, every substitution it
uses declared or built in and every declared one used (Cloud Build refuses both by default),
shell variables escaped as ``$$``, and the deployment itself: the image deployed by digest, CPU
always allocated for the pulling worker, the dead-letter grants of Pub/Sub's service agent,
OIDC on the scheduler jobs and the Firestore index."""

from __future__ import annotations

import re

import pytest
import yaml

from tests.helpers import REPO

BUILD = REPO / "cloudbuild.yaml"

# https://cloud.google.com/build/docs/configuring-builds/substitute-variable-values
BUILT_IN = {
    "PROJECT_ID",
    "PROJECT_NUMBER",
    "BUILD_ID",
    "LOCATION",
    "TRIGGER_NAME",
    "COMMIT_SHA",
    "REVISION_ID",
    "SHORT_SHA",
    "REPO_NAME",
    "REPO_FULL_NAME",
    "BRANCH_NAME",
    "TAG_NAME",
    "REF_NAME",
    "TRIGGER_BUILD_CONFIG_PATH",
    "SERVICE_ACCOUNT_EMAIL",
    "SERVICE_ACCOUNT",
}
# Built-ins that exist only for builds started by a trigger: a manual `gcloud builds submit`
# leaves them empty, so a tag made of them would be invalid.
TRIGGER_ONLY = {"SHORT_SHA", "COMMIT_SHA", "REVISION_ID", "BRANCH_NAME", "TAG_NAME", "REPO_NAME"}
STEP_KEYS = {
    "name",
    "args",
    "env",
    "dir",
    "id",
    "waitFor",
    "entrypoint",
    "secretEnv",
    "volumes",
    "timeout",
    "script",
    "automapSubstitutions",
    "allowFailure",
    "allowExitCodes",
}
# After removing $$ escapes, a $ must start a substitution: $NAME or ${NAME}.
SUBSTITUTION = re.compile(
    r"\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)
FILE_TOKEN = re.compile(
    r"(?<![\w./-])((?:[\w-]+/)*(?:[\w-]+\.(?:ya?ml|json|py|toml|lock|sh|cfg|txt|md)|"
    r"Dockerfile|Makefile|\.dockerignore))(?![\w/-])"
)


def load():
    return yaml.safe_load(BUILD.read_text(encoding="utf-8"))


def strings(node):
    """Every string in the document (values and list items), depth first."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from strings(value)


def used_substitutions(text: str) -> set[str]:
    unescaped = text.replace("$$", "")
    return {m.group("braced") or m.group("bare") for m in SUBSTITUTION.finditer(unescaped)}


def stray_dollars(text: str) -> list[str]:
    """A single $ that starts no substitution: a shell variable or $( ) not written $$."""
    unescaped = text.replace("$$", "")
    rest = SUBSTITUTION.sub("", unescaped)
    return [rest[max(0, i - 20) : i + 20] for i, ch in enumerate(rest) if ch == "$"]


def test_schema_essentials():
    build = load()
    assert isinstance(build, dict)
    assert set(build) <= {
        "steps",
        "substitutions",
        "options",
        "images",
        "timeout",
        "tags",
        "artifacts",
        "availableSecrets",
        "serviceAccount",
        "logsBucket",
        "queueTtl",
    }
    steps = build["steps"]
    assert isinstance(steps, list)
    assert steps
    ids: list[str] = []
    for step in steps:
        assert set(step) <= STEP_KEYS, set(step) - STEP_KEYS
        assert isinstance(step.get("name"), str), step
        # a builder image: Google's builders, Artifact Registry, Docker Hub (with or without
        # a registry host), optionally tagged or pinned
        assert re.fullmatch(r"[\w./-]+(:[\w.-]+)?(@sha256:[0-9a-f]{64})?", step["name"])
        assert re.match(
            r"(gcr\.io|[a-z0-9-]+-docker\.pkg\.dev|docker\.io)/|[\w.-]+(:|$)", step["name"]
        ), f"unknown registry in {step['name']}"
        assert all(isinstance(a, str) for a in step.get("args", [])), step.get("id")
        assert "id" in step, step["name"]
        for dependency in step.get("waitFor", []):
            assert dependency == "-" or dependency in ids, (
                f"step {step['id']} waits for {dependency!r}, not an earlier step"
            )
        ids.append(step["id"])
    assert len(ids) == len(set(ids)), "step ids must be unique"
    for key, value in build.get("substitutions", {}).items():
        assert re.fullmatch(r"_[A-Z0-9_]+", key), f"user substitutions start with _: {key}"
        assert isinstance(value, str), f"{key} must be a string (quote numbers)"


def test_every_substitution_is_declared_or_built_in_and_every_declared_one_used():
    build = load()
    declared = set(build.get("substitutions", {}))
    used: set[str] = set()
    for text in strings({k: v for k, v in build.items() if k != "substitutions"}):
        used |= used_substitutions(text)
    for value in build.get("substitutions", {}).values():  # dynamic substitutions
        used_in_default = used_substitutions(value)
        assert used_in_default <= BUILT_IN | declared, used_in_default
    unknown = sorted(u for u in used if u not in declared and u not in BUILT_IN)
    assert not unknown, f"undeclared substitutions (shell variables need $$): {unknown}"
    unused = sorted(declared - used)
    assert not unused, f"declared but never used (Cloud Build refuses): {unused}"
    assert not used & TRIGGER_ONLY, "manual builds have no commit substitutions"
    if any(
        re.search(r"\$\{?_[A-Z0-9_]+", v) for v in build.get("substitutions", {}).values()
    ) or any("${PROJECT_ID}" in v for v in build.get("substitutions", {}).values()):
        assert build.get("options", {}).get("dynamicSubstitutions") is True


def test_shell_variables_are_escaped():
    for text in strings(load()["steps"]):
        assert not stray_dollars(text), stray_dollars(text)


def test_every_file_it_names_exists():
    names = set()
    for text in strings(load()["steps"]):
        names |= set(FILE_TOKEN.findall(text))
    assert "Dockerfile" in names
    assert "Makefile" in names
    missing = sorted(n for n in names if not (REPO / n).exists())
    assert not missing, f"cloudbuild.yaml names files the repository lacks: {missing}"


def scripts() -> dict[str, str]:
    return {s["id"]: "\n".join(s.get("args", [])) for s in load()["steps"]}


def test_tests_run_before_the_image_is_built_and_deployed_by_digest():
    build = load()
    steps = {s["id"]: s for s in build["steps"]}
    assert "make" in scripts()["test"]
    assert "test" in scripts()["test"]
    assert "test" in steps["build"]["waitFor"]
    deploy = scripts()["deploy"]
    assert "RepoDigests" in scripts()["push"]
    assert '--image="$$image"' in deploy
    assert "image=$$(cat /workspace/image)" in deploy
    assert "push" in steps["deploy"]["waitFor"]


def test_the_worker_gets_cpu_always_and_fixed_instances():
    deploy = scripts()["deploy"]
    worker = deploy[deploy.index("gcloud run deploy ${_WORKER_SERVICE}") :]
    assert "--no-cpu-throttling" in worker
    assert "--min-instances=${_WORKER_INSTANCES}" in worker
    assert "--max-instances=${_WORKER_INSTANCES}" in worker
    assert "--no-allow-unauthenticated" in worker
    intake = deploy[deploy.index("gcloud run deploy ${_SERVICE}") :]
    assert "HEALTHIE_SYNC_WORKER_CONCURRENCY=0" in intake.split("gcloud run deploy")[1]
    assert "type=cloud-storage" in deploy
    assert "mount-path=/config" in deploy


@pytest.mark.parametrize(
    ("kind", "resource", "role"),
    [
        ("topics", "work-dlq", "roles/pubsub.publisher"),
        ("subscriptions", "work", "roles/pubsub.subscriber"),
    ],
)
def test_pubsub_service_agent_can_forward_dead_letters(kind, resource, role):
    pubsub = scripts()["pubsub"]
    assert (
        "agent=serviceAccount:service-${PROJECT_NUMBER}@gcp-sa-pubsub.iam.gserviceaccount.com"
        in pubsub
    )
    grant = rf'{kind} add-iam-policy-binding {resource} --member="\$\$agent"\s*\\?\s*--role={role}'
    assert re.search(grant, pubsub), grant


def test_topology_matches_the_engine():
    from app.queue.pubsub import filter_expression
    from app.queue.topology import subscriptions

    pubsub = scripts()["pubsub"]
    for spec in subscriptions():
        if spec.name.startswith("dirty-"):
            cadence = spec.filter["cadence"]
            assert cadence in pubsub
            assert filter_expression(spec.filter) == f'attributes.cadence = "{cadence}"'
        else:
            assert f"create {spec.name} --topic={spec.topic}" in pubsub
    assert '--message-filter="attributes.cadence = \\"$$cadence\\""' in pubsub
    assert "--dead-letter-topic=work-dlq" in pubsub


def test_scheduler_jobs_use_oidc_and_the_firestore_index_is_declared():
    schedule = scripts()["schedule"]
    assert "--oidc-service-account-email=${_SCHEDULER_SA}" in schedule
    assert '--oidc-token-audience="$$url"' in schedule
    assert "roles/run.invoker" in scripts()["deploy"]
    index = scripts()["firestore-index"]
    assert "--collection-group=${_FIRESTORE_PREFIX}-runs" in index
    assert "order=descending,query-scope=collection-group" in index
