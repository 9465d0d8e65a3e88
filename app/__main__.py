"""``python -m app`` runs the CLI."""

from app.cli.main import main

main()
