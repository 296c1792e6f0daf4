"""Process-wide objects the tasks own (the loader pool, the domain-classifier image cache) and how they travel.

Dask ships a Prefect task's function by value with the globals it reads (cloudpickle: the function is not importable
under its own name, which is the Prefect task's), and a flow's function with its tasks.  An owned object must not
travel as a copy (its lock and compiled loaders belong to its process): it pickles as a reference to the module
global that holds the receiving process's own instance.
"""
from __future__ import annotations

import importlib


class ProcessOwned:
    """Mixin: ``_global = (module, name)`` names the module global holding each process's own instance."""

    _global: tuple[str, str]

    def __reduce__(self):
        return (process_instance, self._global)


def process_instance(module: str, name: str) -> object:
    """This process's instance of an owned object (what an unpickled reference becomes)."""
    return getattr(importlib.import_module(module), name)
