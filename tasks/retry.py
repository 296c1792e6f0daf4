"""Which task failures are worth a retry: transient ones (a killed worker, memory pressure, flaky I/O), never bad input.

Every task with ``retries=`` passes ``retry_condition_fn=retry_if_transient``.  A retry of a ValueError, a missing
file or an unknown name fails the same way again, after the retry delay and a second (third) start-up, and buries
the cause under repeated tracebacks; a rerun of the command resumes from the store anyway (content-addressed runs,
epoch checkpoints).  So only failures that another attempt can plausibly get past are retried:

============================================  ==========  ==================================================
exception                                     retried     why
============================================  ==========  ==================================================
MemoryError, CUDA out of memory               yes         memory held by neighbours (shared node or GPU) or
                                                          by the failed attempt is freed; on a cluster the
                                                          retry may land on another worker.  A batch that
                                                          can never fit fails again within one batch.
TimeoutError, ConnectionError                 yes         network / server hiccups
distributed / tornado comm errors,            yes         a lost or killed worker, a closed connection
KilledWorker, BrokenProcessPool,
"DataLoader worker ... exited/killed"
OSError with an errno not listed below        yes         I/O errors (EIO, ESTALE, EAGAIN, EBUSY, ENOMEM...)
FileNotFoundError, NotADirectoryError,        no          the path is wrong until the user changes it
IsADirectoryError, FileExistsError,
PermissionError; EROFS, ENOSPC, EDQUOT,
ENAMETOOLONG, ELOOP, EINVAL, EFBIG, ...
OSError without an errno                      no          a library's "this file is bad" (PIL's truncated
                                                          image, unreadable-image counts, layout errors)
ValueError (pydantic ValidationError too),    no          validation and programming errors: deterministic
TypeError, LookupError (KeyError, unknown
registry names), AttributeError, AssertionError,
ArithmeticError, NotImplementedError, ImportError
pickle errors, EOFError                       no          a corrupt or truncated file stays corrupt
anything else                                 no          unknown means not known to be transient; a rerun
                                                          resumes where this attempt stopped
============================================  ==========  ==================================================

An exception of an undecided kind (e.g. a RuntimeError) is judged by its cause (``raise ... from``) or context.
"""
from __future__ import annotations

import errno
import pickle
from typing import Any

# OSError errnos that describe the path or the file system, not a moment: a retry two seconds later sees the same.
PERMANENT_ERRNOS = frozenset(
    getattr(errno, name) for name in (
        "ENOENT", "ENOTDIR", "EISDIR", "EEXIST", "EACCES", "EPERM", "EROFS", "ENOSPC", "EDQUOT", "ENAMETOOLONG",
        "ELOOP", "EINVAL", "EFBIG", "ENOTEMPTY", "EXDEV", "ENOEXEC", "EBADF", "ENXIO", "ENODEV",
    ) if hasattr(errno, name)
)

# Matched by class name along the MRO, so neither distributed nor tornado nor torch need importing here.
_TRANSIENT_CLASS_NAMES = frozenset({
    "CommClosedError", "StreamClosedError", "KilledWorker", "BrokenProcessPool", "OutOfMemoryError",
})
_PERMANENT_CLASS_NAMES = frozenset({"FatalCommClosedError"})  # distributed: e.g. TLS misconfiguration
# RuntimeError messages of transient failures (torch raises these as plain RuntimeErrors).
_TRANSIENT_MESSAGES = ("out of memory", "DataLoader worker")

_PERMANENT_TYPES = (
    FileNotFoundError, NotADirectoryError, IsADirectoryError, FileExistsError, PermissionError,
    ValueError, TypeError, LookupError, AttributeError, AssertionError, ArithmeticError, NotImplementedError,
    ImportError, NameError, pickle.PickleError, EOFError,
)


def _verdict(exc: BaseException) -> bool | None:
    """True (transient), False (permanent) or None (undecided: look at the cause) for ``exc`` alone."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    if names & _PERMANENT_CLASS_NAMES:
        return False
    if isinstance(exc, (MemoryError, TimeoutError, ConnectionError)) or names & _TRANSIENT_CLASS_NAMES:
        return True
    if isinstance(exc, _PERMANENT_TYPES):
        return False
    if isinstance(exc, OSError):
        return exc.errno is not None and exc.errno not in PERMANENT_ERRNOS
    if isinstance(exc, RuntimeError) and any(m in str(exc) for m in _TRANSIENT_MESSAGES):
        return True
    return None


def is_transient_error(exc: BaseException | None) -> bool:
    """Whether another attempt of the task that raised ``exc`` could succeed (see the module docstring)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        verdict = _verdict(exc)
        if verdict is not None:
            return verdict
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    return False


def retry_if_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry the failed ``state`` only when its exception is transient."""
    from prefect.states import get_state_exception

    try:
        exc = get_state_exception(state)  # the task's exception (Prefect puts it in the Failed state's data)
    except Exception:  # noqa: BLE001 -- an unreadable state is not known to be transient
        return False
    return is_transient_error(exc)


__all__ = ["PERMANENT_ERRNOS", "is_transient_error", "retry_if_transient"]
