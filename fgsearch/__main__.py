"""``python -m fgsearch`` runs the command-line tool."""

from fgsearch.console.cli import main

if __name__ == "__main__":
    main()
