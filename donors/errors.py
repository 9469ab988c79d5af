"""The one error family: every error a user can fix derives from :class:`DonorsError`.

Its message names the file, field or item at fault and the fix; the CLI prints it and exits
2, with no traceback. Anything else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations

import reprlib
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


class DonorsError(Exception):
    """A study, a table or an input that cannot be used as it is; the message says how to fix it."""


class InsufficientData(DonorsError, ValueError):
    """An analysis has too little data to give a result; its message is the reason shown in ``skipped_analyses``."""


class InputNotFound(DonorsError, FileNotFoundError):
    """A study directory, store or results table that is not where the user pointed."""


class OutputNotWritable(DonorsError, OSError):
    """An output (tables, report, figures, predictions) that cannot be written where it was asked for."""


@contextmanager
def writing_to(path: str | Path, what: str) -> Iterator[None]:
    """Writes of ``what`` under ``path``: one that fails (read-only, no space, no permission) names the place and the fix."""
    try:
        yield
    except DonorsError:
        raise
    except OSError as error:
        where = error.filename or path
        raise OutputNotWritable(
            f"cannot write {what} to {where} ({error.strerror or error}); give a folder that can be written "
            "(--out), or free space / fix its permissions"
        ) from error


MAX_QUOTED = 200
"""Characters of a bad value an error message repeats; the rest is elided."""


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxstring, _SHORT.maxother = 3, 8, 8, MAX_QUOTED, MAX_QUOTED


def _quoted(value) -> str:
    """A bad value as an error message repeats it: bounded, however large or deeply nested it is."""
    return _SHORT.repr(value)


def describe_validation_error(error, heading: str, *, noun: str = "field", reference: str = "") -> str:
    """A pydantic ``ValidationError`` as ``heading`` and one line per problem: where, what is wrong, the value given.

    ``noun`` names what the keys are to the user ("field" of a config, "option" of a task);
    ``reference`` where the documented ones are listed.
    """
    lines = [heading]
    for problem in error.errors():
        where = ".".join(str(part) for part in problem["loc"]) or "(top level)"
        value = problem.get("input")
        shown = "" if isinstance(value, dict) or problem["type"] == "missing" else f" (got {_quoted(value)})"
        if problem["type"] == "extra_forbidden":
            message = f"unknown {noun}; check its spelling against the documented {noun}s{f' ({reference})' if reference else ''}"
        elif problem["type"] == "missing":
            message = f"required {noun} is missing"
        else:
            message = problem["msg"].removeprefix("Value error, ")
        if len(message) > 2 * MAX_QUOTED:  # a validator's message can quote the value too
            message = f"{message[:MAX_QUOTED]}... ({len(message):,} characters)"
        lines.append(f"  - {where}: {message}{shown}")
    return "\n".join(lines)
