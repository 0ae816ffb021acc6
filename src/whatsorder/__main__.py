"""``python -m whatsorder`` runs the CLI."""

from whatsorder.cli import main

main()
