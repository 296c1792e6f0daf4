"""askshift.tasks: Prefect tasks, one unit of expensive work each (train one model, predict one split...)."""
import logging

from askshift.env import apply_safe_defaults

apply_safe_defaults()


class _DropTagDeadlockWarning(logging.Filter):
    """Prefect's thread-pool runner warns whenever a tagged task waits on others with few workers.

    Our only tag is ``gpu``, used by the Dask backends to claim a GPU resource; no tag concurrency limit is
    ever set on it, so the deadlock the warning is about cannot happen, and with one worker (the local
    backend) it would otherwise be printed for every prediction task.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "may lead to dead-locks" not in record.getMessage()


logging.getLogger("prefect.task_runner.threadpool").addFilter(_DropTagDeadlockWarning())
