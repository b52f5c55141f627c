"""User-facing errors.

A `UserError` is a mistake the user can fix (bad manifest, missing file, wrong option). The CLI
prints its message as a single line and exits non-zero; it never shows a traceback for one.
"""


class UserError(Exception):
    """One-line, actionable message: what is wrong, where, and how to fix it."""


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (library messages often span several)."""
    return " ".join(str(exc).split()) or type(exc).__name__
