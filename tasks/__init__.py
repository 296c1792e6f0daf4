"""askshift.tasks: Prefect tasks, one unit of expensive work each (train one model, predict one split...)."""
from lib.env import apply_safe_defaults

apply_safe_defaults()
