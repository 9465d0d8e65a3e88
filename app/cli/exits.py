"""Exit codes scripts can rely on, and the one line every failure becomes.

======  ==========================================================================
code    meaning
======  ==========================================================================
0       done, nothing to report
1       the command ran and found a problem: a flush dead-lettered work, a dry run
        refused every patient, ``webhooks status`` found drift, ``validate`` or
        ``doctor`` found an error
2       usage or configuration error: fix the command line, the config files or the
        environment (the message says where)
3       a service could not be reached or kept failing: Healthie, a target, the
        queue or the state store (the message names it; running again may work)
70      internal error: a bug; ``--debug`` prints the traceback
======  ==========================================================================

The README's table is this one. Messages carry kinds, ids, field paths and URLs, never a
patient value or a secret: an unexpected exception is reported by its type and where it was
raised, not by its text (which could quote either).
"""

from __future__ import annotations

import traceback
from enum import IntEnum
from pathlib import Path

from pydantic import ValidationError

from app.core.errors import (
    ConfigurationError,
    FatalError,
    HealthieSyncError,
    RetriableError,
    SkippableError,
)


class ExitCode(IntEnum):
    """See the module docstring."""

    OK = 0
    PROBLEMS = 1
    USAGE = 2
    UNREACHABLE = 3
    INTERNAL = 70


def exit_code(exc: BaseException) -> ExitCode:
    """The exit code a failure ends the command with."""
    if isinstance(exc, ConfigurationError | ValidationError):
        return ExitCode.USAGE
    if isinstance(exc, RetriableError):
        return ExitCode.UNREACHABLE
    if isinstance(exc, FatalError | SkippableError | HealthieSyncError):
        return ExitCode.PROBLEMS
    return ExitCode.INTERNAL


def settings_problem(exc: ValidationError) -> str:
    """A settings error as environment variable names and what is wrong (never the value)."""
    problems = []
    for error in exc.errors(include_input=False):
        field = ".".join(str(p) for p in error["loc"]) or "(root)"
        problems.append(f"HEALTHIE_SYNC_{field.upper()}: {error['msg']}")
    return "invalid setting: " + "; ".join(problems)


def one_line(exc: BaseException) -> str:
    """``error: <what>`` for ``exc``, on one line, fit for a terminal and a log."""
    if isinstance(exc, ValidationError) and exc.title == "Settings":
        text = settings_problem(exc)
    elif isinstance(exc, HealthieSyncError):
        text = str(exc) or exc.kind
        if isinstance(exc, RetriableError):
            text = f"{text} ({exc.kind}; running again may work)"
    else:
        frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
        where = f" at {Path(frame.filename).name}:{frame.lineno}" if frame else ""
        text = (
            f"internal error: {type(exc).__name__}{where} "
            "(a bug; run again with --debug for the traceback)"
        )
    return "error: " + " ".join(text.split())
