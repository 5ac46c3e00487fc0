"""Installed as ``fgsearch.console``: the repository root holds only ``cli.py`` as a module.

This file exists so that setuptools can install the root ``cli.py`` under the single import name
``fgsearch`` (``fgsearch.console.cli``) in both regular and editable installs.
"""
