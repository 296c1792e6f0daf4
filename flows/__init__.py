"""askshift.flows: Prefect flows composing tasks into the experiments users trigger, and the CLI."""
from askshift.env import apply_safe_defaults

apply_safe_defaults()
