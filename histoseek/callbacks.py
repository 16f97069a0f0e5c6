"""The two callbacks library code reports through, so it never imports the reporting layer."""

from collections.abc import Callable

#: progress(done, total): how far a long job is; a count that starts again is a new phase.
Progress = Callable[[int, int], None]
#: notify(line): one line worth telling the user (a choice made, a file skipped).
Notify = Callable[[str], None]
