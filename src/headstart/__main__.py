"""``python -m headstart`` runs the CLI."""

from .cli import main

main()
