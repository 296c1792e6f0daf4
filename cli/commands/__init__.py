"""CLI sub-commands: each module defines ``register(subparsers)`` and sets ``func`` on its parser.

``run_<flow>.py`` modules are not top-level commands: ``run.py`` collects them under ``askshift run``.
"""
