"""askshift: ask your distribution shift if pre-training is right for you.

The layers: ``askshift.lib`` (the science, plain Python), ``askshift.tasks`` (Prefect tasks wrapping it),
``askshift.flows`` (the experiments, composed of tasks), ``askshift.cli`` (the ``askshift`` command).  On disk
they are the checkout's ``lib/``, ``tasks/``, ``flows/`` and ``cli/`` folders (``pyproject.toml``: ``package-dir``).
"""
__version__ = "0.1.0"
