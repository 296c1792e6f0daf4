"""askshift.flows: Prefect flows composing tasks into the experiments users trigger (the CLI is askshift.cli)."""
from askshift.env import apply_safe_defaults

apply_safe_defaults()
