"""``python -m fedshield``: the same as the ``fedshield`` command."""

from fedshield.cli import main

main()
