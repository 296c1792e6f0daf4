"""askshift.cli: the ``askshift`` command (``main``) and its subcommands (``askshift.cli.commands``)."""
