"""The command line, ``fgsearch.console.cli``.

Its module is the repository's root ``cli.py``; the build installs it here (pyproject.toml:
``py-modules``), so the repository root is never a package and a clone never shadows ``fgsearch``.
"""
