"""`python -m histoseek`: the same as the `histoseek` command (and what `torchrun -m` runs)."""

from histoseek.cli import main

main()
