"""``python -m tapster`` runs the same command as the ``tapster`` script."""

from tapster.cli import main

main()
