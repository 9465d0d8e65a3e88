"""The example integrations in ``config/examples/`` (and their plans) validate with no error,
typed against Healthie's published schema: an example a user copies must work."""

from __future__ import annotations

import tomllib

from app.secrets.stores import env_name
from tests.cli.test_cli_errors import run_cli
from tests.helpers import REPO

EXAMPLES = REPO / "config" / "examples"


def test_every_example_integration_validates(shared_dir):
    files = sorted(EXAMPLES.glob("*.toml"))
    assert files, "no example integrations"
    env: dict[str, str] = {}
    for path in files:
        config = tomllib.loads(path.read_text(encoding="utf-8"))
        refs = [config["healthie"]["api_key_secret"], *config["healthie"]["webhook_secrets"]]
        refs += [r for t in config.get("targets", []) for r in t.get("credentials", {}).values()]
        if config.get("reverse", {}).get("client_secret"):
            refs.append(config["reverse"]["client_secret"])
        env |= {env_name(ref): "placeholder-for-validation" for ref in refs}
    schema = shared_dir / "healthie" / "schema.graphql"
    done = run_cli(
        "--config-dir", str(EXAMPLES), "validate", "--schema", str(schema), "--json", env=env
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert '"severity": "error"' not in done.stdout.replace('":"', '": "')
