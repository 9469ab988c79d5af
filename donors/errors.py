"""The one error family: every error a user can fix derives from :class:`DonorsError`.

Its message names the file, field or item at fault and the fix; the CLI prints it and exits
2, with no traceback. Anything else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations


class DonorsError(Exception):
    """A study, a table or an input that cannot be used as it is; the message says how to fix it."""
