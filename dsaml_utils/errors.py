"""Errors that the CLI reports as one clear line (exit status 2, or the error's `exit_code`) instead of a traceback."""


class UserError(Exception):
    """A problem with the user's input or files; the message names the file and what is wrong."""


class DataError(UserError):
    """A dataset file is missing, unreadable or inconsistent."""


class RunConflict(UserError):
    """A run folder already holds a run with other settings (it is never overwritten)."""


class Interrupted(UserError):
    """Training stopped on SIGINT or SIGTERM after saving a checkpoint; the same command resumes it."""

    exit_code = 130  # the shell's status for a program ended by SIGINT
