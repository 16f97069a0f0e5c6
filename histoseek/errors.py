"""The one exception type that the CLI turns into a single clear line and a non-zero exit."""


class HistoseekError(Exception):
    """A problem the user can fix (bad input, missing file); shown as one line, exit code 1."""
