"""`python -m worker.cli`: the `contactsync` command."""

from worker.cli import main

main()
