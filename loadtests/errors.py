"""The harness's errors: each message is the one line the user sees before a non-zero exit."""


class UsageError(Exception):
    """Bad input, caught before anything is started (exit 2)."""


class RunError(Exception):
    """The run could not be carried out (exit 2)."""


class ServerError(RunError):
    """A server under test could not be started or stopped properly (exit 2)."""
