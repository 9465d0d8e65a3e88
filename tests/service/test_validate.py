"""``validate``: each user mistake is one finding with a hint at its file:line:column, the demo
validates clean (no false positives), and the command's exit codes and ``--json``.

Plan paths are checked both ways the engine can: against the entry selection alone (no schema
at hand) and typed against Healthie's published schema (``../shared``; skipped without it).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from app.agent.plan_paths import check_expression, context_shape
from app.core.settings import Settings
from app.secrets.stores import EnvSecretStore, MemorySecretStore
from app.service.validate import Finding, validate
from app.service.validate_entry import entry_shape
from tests.helpers import REPO

DEMO_TOML = REPO / "config" / "integrations" / "demo-clinic.toml"
DEMO_PLAN = REPO / "prompts" / "plans" / "demo-clinic.plan.json"
INSTRUCTIONS = REPO / "prompts" / "examples" / "demo-clinic.md"
SECRETS = {"demo-clinic/healthie-api-key": "key", "demo-clinic/webhook-signing-secret": "whsec"}


def demo_copy(tmp_path: Path, *, toml=lambda s: s, plan=lambda s: s) -> Settings:
    """Settings for a config directory holding the demo integration and its plan, each
    edited by ``toml`` / ``plan`` (text -> text)."""
    config = tmp_path / "config"
    config.mkdir(exist_ok=True)
    plan_path = tmp_path / "demo-clinic.plan.json"
    plan_path.write_text(plan(DEMO_PLAN.read_text(encoding="utf-8")), encoding="utf-8")
    text = (
        DEMO_TOML.read_text(encoding="utf-8")
        .replace('"../../prompts/plans/demo-clinic.plan.json"', json.dumps(str(plan_path)))
        .replace('"../../prompts/examples/demo-clinic.md"', json.dumps(str(INSTRUCTIONS)))
    )
    (config / "demo-clinic.toml").write_text(toml(text), encoding="utf-8")
    return Settings(config_dir=config, data_dir=tmp_path / "data")


def run(settings: Settings, schema=None, secrets=None, names=None) -> list[Finding]:
    return validate(settings, names, secrets=secrets or MemorySecretStore(SECRETS), schema=schema)


def problems(findings: list[Finding]) -> list[Finding]:
    """Errors and warnings (notes are not problems)."""
    return [f for f in findings if f.severity != "info"]


def line_of(path: Path, needle: str) -> int:
    lines = path.read_text(encoding="utf-8").splitlines()
    return next(n for n, line in enumerate(lines, start=1) if needle in line)


@pytest.fixture(params=["selection", "schema"])
def schema(request):
    """None (paths against the entry selection only) or Healthie's published schema."""
    return None if request.param == "selection" else request.getfixturevalue("healthie_schema")


# -- no false positives ----------------------------------------------------------------------


def test_the_demo_validates_clean(tmp_path, schema):
    findings = run(demo_copy(tmp_path), schema)
    assert problems(findings) == []
    notes = [f for f in findings if f.severity == "info"]
    # without a schema, and only then, a note says the paths were not typed
    assert len(notes) == (1 if schema is None else 0)


def test_the_repository_config_validates_clean(healthie_schema):
    findings = run(Settings(config_dir=REPO / "config" / "integrations"), healthie_schema)
    assert findings == []


# -- one finding per mistake, with a hint --------------------------------------------------------


def test_a_misspelt_plan_field_is_an_error_naming_the_step_and_the_fix(tmp_path, schema):
    settings = demo_copy(
        tmp_path, plan=lambda s: s.replace("entry.user_group.name", "entry.user_grop.name")
    )
    (finding,) = problems(run(settings, schema))
    assert finding.severity == "error"
    assert finding.problem.startswith("step 1 (instructions 1 and 2), values.user_group:")
    assert "entry.user_grop" in finding.problem
    assert finding.hint == "did you mean user_group?"
    plan = tmp_path / "demo-clinic.plan.json"
    line = line_of(plan, "entry.user_grop.name")
    assert finding.where.endswith(f"demo-clinic.plan.json:{line}:23")
    assert finding.line().startswith("error: demo-clinic: step 1")


def test_a_misspelt_item_field_is_typed_from_for_each(tmp_path, schema):
    settings = demo_copy(
        tmp_path, plan=lambda s: s.replace("item.provider.full_name", "item.provider.fullname")
    )
    (finding,) = problems(run(settings, schema))
    assert "item.provider.fullname" in finding.problem
    assert finding.hint == "did you mean full_name?"


def test_a_field_read_on_a_list_is_caught_when_typed(healthie_schema, tmp_path):
    settings = demo_copy(
        tmp_path,
        plan=lambda s: s.replace(
            '"entry.policies[0].insurance_plan.payer_name"',
            '"entry.policies.insurance_plan.payer_name"',
        ),
    )
    assert problems(run(settings)) == []  # the selection alone cannot tell a list
    (finding,) = problems(run(settings, healthie_schema))
    assert "list of Policy" in finding.problem
    assert "entry.policies[0].insurance_plan" in finding.hint


def test_an_unknown_connector_is_one_error_with_a_suggestion(tmp_path, schema):
    settings = demo_copy(
        tmp_path, toml=lambda s: s.replace('connector = "sqlite"', 'connector = "sqlit"')
    )
    (finding,) = problems(run(settings, schema))
    assert "unknown connector 'sqlit'" in finding.problem
    assert finding.hint.startswith("did you mean sqlite?")
    line = line_of(Path(settings.config_dir) / "demo-clinic.toml", 'connector = "sqlit"')
    assert finding.where.endswith(f"demo-clinic.toml:{line}:1")


def test_invalid_plan_json_is_one_error_at_its_position(tmp_path, schema):
    settings = demo_copy(tmp_path, plan=lambda s: s.replace('"tables": {},', '"tables": {},,', 1))
    (finding,) = problems(run(settings, schema))
    assert finding.problem.startswith("the plan is not valid JSON")
    plan = tmp_path / "demo-clinic.plan.json"
    line = line_of(plan, '"tables": {},,')
    column = plan.read_text(encoding="utf-8").splitlines()[line - 1].index(",,") + 2
    assert finding.where.endswith(f"demo-clinic.plan.json:{line}:{column}")
    assert finding.hint


def test_an_unknown_transform_is_one_error_with_a_suggestion(tmp_path, schema):
    settings = demo_copy(tmp_path, plan=lambda s: s.replace('"phone_e164"\n', '"phone_e614"\n'))
    (finding,) = problems(run(settings, schema))
    assert "unknown transform 'phone_e614'" in finding.problem
    assert finding.hint == "did you mean phone_e164?"


@pytest.mark.parametrize(
    ("value", "hint"),
    [
        ("monthly", "monthly is not supported: use weekly"),
        ("dayly", "did you mean daily?"),
    ],
)
def test_a_bad_cadence_is_one_error_with_the_supported_list(tmp_path, value, hint):
    settings = demo_copy(
        tmp_path, toml=lambda s: s.replace('cadence = "daily"', f'cadence = "{value}"')
    )
    (finding,) = problems(run(settings))
    assert finding.problem == f"cadence {value!r} is not supported"
    assert finding.hint == f"cadence must be hourly, every_6_hours, daily or weekly; {hint}"
    line = line_of(Path(settings.config_dir) / "demo-clinic.toml", "cadence =")
    assert finding.where.endswith(f"demo-clinic.toml:{line}:1")
    rendered = finding.render().splitlines()
    assert rendered[0].startswith("error: demo-clinic: cadence")
    assert rendered[1].startswith("  hint: ")


def test_an_unknown_key_suggests_the_known_one(tmp_path):
    settings = demo_copy(tmp_path, toml=lambda s: s.replace("batch_size = 20", "batch_sise = 20"))
    (finding,) = problems(run(settings))
    assert finding.problem == "unknown key healthie.batch_sise"
    assert finding.hint == "did you mean batch_size?"


def test_an_unknown_target_option_suggests_the_known_one(tmp_path):
    settings = demo_copy(tmp_path, toml=lambda s: s.replace("options = { path", "options = { pth"))
    (finding,) = problems(run(settings))
    assert "unknown option options.pth" in finding.problem
    assert finding.hint == "did you mean path?"


def test_a_broken_file_is_reported_and_the_others_still_checked(tmp_path):
    settings = demo_copy(
        tmp_path, toml=lambda s: s.replace('connector = "sqlite"', 'connector = "sqlit"')
    )
    (Path(settings.config_dir) / "other.toml").write_text('id = "other"\ncadence = \n', "utf-8")
    found = problems(run(settings))
    assert sorted(f.integration for f in found) == ["demo-clinic", "other"]
    broken = next(f for f in found if f.integration == "other")
    assert broken.problem.startswith("not valid TOML")
    assert broken.where.endswith("other.toml:2:11")
    # naming one integration checks only that one
    assert [f.integration for f in problems(run(settings, names=["other"]))] == ["other"]


def test_missing_secrets_name_the_variable_never_a_value(tmp_path):
    settings = demo_copy(tmp_path)
    env = EnvSecretStore({"HEALTHIE_SYNC_SECRET_DEMO_CLINIC_HEALTHIE_API_KEY": "s3cr3t-v4lue"})
    (finding,) = problems(run(settings, secrets=env))
    assert "$HEALTHIE_SYNC_SECRET_DEMO_CLINIC_WEBHOOK_SIGNING_SECRET" in finding.problem
    assert finding.hint.startswith(
        "export HEALTHIE_SYNC_SECRET_DEMO_CLINIC_WEBHOOK_SIGNING_SECRET="
    )
    assert "s3cr3t" not in json.dumps([f.as_dict() for f in run(settings, secrets=env)])


def test_a_plan_step_for_an_unknown_target_or_operation(tmp_path):
    settings = demo_copy(
        tmp_path,
        plan=lambda s: s.replace('"target": "warehouse"', '"target": "warehous"', 1).replace(
            '"operation": "delete_row"', '"operation": "delete_rows"', 1
        ),
    )
    found = problems(run(settings))
    assert [(f.problem.split(":")[0], f.hint) for f in found] == [
        ("step 1 (instructions 1 and 2)", "did you mean warehouse?"),
        ("step 3 (instruction 3", "did you mean delete_row?"),
    ]


# -- expressions the walk cannot type are said to be unchecked, not guessed ----------------------


def test_untypeable_parts_are_notes_and_mistakes_in_jmespath_itself_are_errors(healthie_schema):
    context = context_shape(entry_shape(healthie_schema), None)

    def issues(expr: str) -> list[tuple[str, str]]:
        return [(i.severity, i.path) for i in check_expression(expr, context)[1]]

    assert issues("values(entry.user_group)[0].x") == [("info", "values(…)")]
    assert issues("entry.*.anything") == [("info", "entry.*.anything")]
    assert issues("sort_by(entry.appointments, &dat)[0].id") == [("error", "sort_by()&.dat")]
    assert issues("lenght(entry.providers)") == [("error", "lenght()")]
    assert issues("entry.appointments[?deleted_at == `null`] | length(@)") == []
    assert issues("entry.appointments[?pm_status == true]") == [
        ("error", "entry.appointments[?].true")
    ]
    assert issues("!entry.active") == [("error", "!entry.active")]
    assert issues("entry.user_group[0].name") == [("error", "entry.user_group")]
    assert issues("first_name") == [("error", "first_name")]
    assert issues("item.id") == [("error", "item.id")]


# -- the command -------------------------------------------------------------------------------


def cli_app() -> typer.Typer:
    from app.cli.validate import validate as command

    app = typer.Typer()
    app.command()(command)
    app.command("noop")(lambda: None)  # two commands, so ``validate`` is named on the line
    return app


def invoke(settings: Settings, *args: str, env: dict | None = None):
    environ = {
        "HEALTHIE_SYNC_CONFIG_DIR": str(settings.config_dir),
        "HEALTHIE_SYNC_SECRET_DEMO_CLINIC_HEALTHIE_API_KEY": "key",
        "HEALTHIE_SYNC_SECRET_DEMO_CLINIC_WEBHOOK_SIGNING_SECRET": "whsec",
        **(env or {}),
    }
    return CliRunner().invoke(cli_app(), ["validate", *args], env=environ)


def test_the_command_exits_0_when_clean_1_on_an_error_2_for_usage(tmp_path):
    clean = invoke(demo_copy(tmp_path))
    assert clean.exit_code == 0, clean.output
    assert clean.output.strip().endswith("ok: no problems found")

    broken = demo_copy(
        tmp_path, plan=lambda s: s.replace("entry.user_group.name", "entry.user_grop.name")
    )
    result = invoke(broken)
    assert result.exit_code == 1
    assert "error: demo-clinic: step 1" in result.output
    assert "  hint: did you mean user_group?" in result.output

    lines = [json.loads(line) for line in invoke(broken, "--json").output.splitlines()]
    errors = [d for d in lines if d["severity"] == "error"]
    assert len(errors) == 1
    assert errors[0]["hint"] == "did you mean user_group?"
    assert set(errors[0]) == {"integration", "where", "problem", "hint", "severity"}

    unknown = invoke(broken, "demo-clinik")
    assert unknown.exit_code == 2
    assert "unknown integration 'demo-clinik'" in unknown.output
    assert "did you mean demo-clinic?" in unknown.output


def test_warnings_do_not_fail_the_command(tmp_path):
    settings = demo_copy(
        tmp_path, plan=lambda s: s.replace('"integration": "demo-clinic"', '"integration": "x"')
    )
    result = invoke(settings)
    assert result.exit_code == 0, result.output
    assert "warning: demo-clinic: the plan says it is for integration 'x'" in result.output


def test_the_command_types_paths_with_a_schema_file(tmp_path, shared_dir):
    settings = demo_copy(
        tmp_path,
        plan=lambda s: s.replace(
            '"entry.policies[0].insurance_plan.payer_name"',
            '"entry.policies.insurance_plan.payer_name"',
        ),
    )
    assert invoke(settings).exit_code == 0
    typed = invoke(settings, "--schema", str(shared_dir / "healthie" / "schema.graphql"))
    assert typed.exit_code == 1
    assert "list of Policy" in typed.output
