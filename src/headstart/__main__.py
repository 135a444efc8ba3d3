"""``python -m headstart`` runs the CLI."""

from .cli.main import main

main()
