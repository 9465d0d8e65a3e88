"""Breaking a core property makes the tests that claim it fail.

For each property, chosen tests run in a subprocess with the property broken on purpose by the
``tests.meta.breaks`` plugin (see its docstring for what each break does), and every one of them
must fail; as a control, the same tests pass with nothing broken. A test that keeps passing when
its property is switched off is not testing it; this module is what keeps that true as the code
and the tests change. It runs with the rest of the suite (``make test``, CI).

The targets are fast unit and in-process tests that exercise the property directly:

==================  ===========================================================================
property            tests that must fail when it is broken
==================  ===========================================================================
signature           a rotation accepts exactly the old and new secret; missing headers or no
                    secrets are refused; the webhook route answers 401 to a bad signature and
                    publishes nothing
body_digest         a captured signature cannot carry another body of the same length; the
                    Content-Digest forms that do not match the body are refused
skip_unchanged      a second run over unchanged entries writes nothing and counts them skipped
patient_lease       a patient another worker holds is not processed; one patient twice in a
                    batch is processed once
ack_after_write     a delivery whose work failed (retriably) is retried, then dead-lettered:
                    it was not acknowledged before its work was done
==================  ===========================================================================
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.meta.breaks import BREAKS, ENV

REPO = Path(__file__).resolve().parents[2]

TARGETS: dict[str, list[str]] = {
    "signature": [
        "tests/intake/test_signature.py::test_rotation_accepts_old_and_new_secret_and_nothing_else",
        "tests/intake/test_signature.py::test_missing_headers_and_empty_secrets_are_rejected",
        "tests/intake/test_webhooks.py::test_bad_signature_is_401_and_publishes_nothing",
    ],
    "body_digest": [
        "tests/intake/test_signature.py::test_captured_signature_cannot_carry_another_body_of_same_length",
        "tests/intake/test_signature.py::test_digest_forms",
    ],
    "skip_unchanged": [
        "tests/workers/test_workers.py::test_process_writes_then_skips_unchanged",
    ],
    "patient_lease": [
        "tests/meta/test_patient_leases.py::test_a_patient_another_worker_holds_is_left_alone_and_handed_back",
        "tests/meta/test_patient_leases.py::test_the_same_patient_twice_in_one_batch_is_processed_once",
    ],
    "ack_after_write": [
        "tests/workers/test_workers.py::test_retriable_errors_back_off_then_dead_letter",
    ],
}

#: pytest's exit status when tests ran and some failed (2+ is an error of the run itself)
TESTS_FAILED = 1


def start(tests: list[str], broken: str | None) -> subprocess.Popen[str]:
    """``tests`` in a fresh interpreter with the break plugin loaded, ``broken`` set or not."""
    env = {k: v for k, v in os.environ.items() if k != ENV}
    if broken is not None:
        env[ENV] = broken
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-rf",
        "-p",
        "tests.meta.breaks",
        "-p",
        "no:cacheprovider",
        *tests,
    ]
    return subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
        command,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.fixture(scope="module")
def runs() -> dict[str | None, tuple[int, str]]:
    """Every break's run and the control run (key None), started together: each is mostly
    interpreter start-up and imports, so they overlap well. Exit status and output."""
    everything = sorted({t for tests in TARGETS.values() for t in tests})
    started = {None: start(everything, None)} | {p: start(t, p) for p, t in TARGETS.items()}
    out: dict[str | None, tuple[int, str]] = {}
    try:
        for prop, process in started.items():
            output, _ = process.communicate(timeout=300)
            out[prop] = (process.returncode, output)
    finally:
        for process in started.values():
            if process.poll() is None:
                process.kill()
                process.communicate()
    return out


def failed_tests(output: str) -> set[str]:
    """The node ids pytest's short summary lists as FAILED (parameters dropped)."""
    out = set()
    for line in output.splitlines():
        if line.startswith("FAILED "):
            out.add(line.split()[1].split("[")[0])
    return out


def test_every_break_has_targets() -> None:
    assert set(TARGETS) == set(BREAKS)
    assert all(TARGETS.values())


def test_the_targets_pass_with_nothing_broken(runs: dict[str | None, tuple[int, str]]) -> None:
    status, output = runs[None]
    assert status == 0, output[-4000:]
    assert "BROKEN" not in output


@pytest.mark.parametrize("prop", sorted(TARGETS))
def test_breaking_the_property_fails_every_target(
    prop: str, runs: dict[str | None, tuple[int, str]]
) -> None:
    status, output = runs[prop]
    assert f"property {prop!r} is BROKEN on purpose" in output, output[-4000:]
    assert status == TESTS_FAILED, output[-4000:]
    missed = set(TARGETS[prop]) - failed_tests(output)
    assert not missed, f"still passing with {prop} broken: {sorted(missed)}\n{output[-4000:]}"
