"""Every exception ether-prep raises, in one place.

Lower-level errors (PyAV, zarr, whisperx, MediaPipe, ...) are translated at the adapter boundary with
``raise ... from exc`` so that a message always says what went wrong, with which file, and how to fix it.

    EtherPrepError
    ├── ConfigError        pipelines.yaml or a CLI option is invalid (raised before any compute)
    ├── InputError         a recording cannot be read: corrupt, truncated, empty, not media
    ├── ModelError         a model cannot be found or loaded (path, package, hub)
    ├── StageError         a stage failed on one session for another reason
    ├── StoreError         the Zarr store is missing, of another schema, or inconsistent
    │   └── StoreDamageError   a stage's stored outputs differ from what it wrote (a chunk or metadata file
    │                          missing, truncated, changed): named by session, stage and array
    ├── LockError          another process holds the store (or a model download) right now
    └── ExecutorError      the executor cannot start (Ray: no cluster at the address, a failed local start)
"""

from __future__ import annotations

import signal


class EtherPrepError(Exception):
    """Base class of all ether-prep errors."""


class ConfigError(EtherPrepError):
    """pipelines.yaml or an option is invalid."""


class InputError(EtherPrepError):
    """A recording cannot be read."""


class ModelError(EtherPrepError):
    """A model cannot be resolved or loaded."""


class StageError(EtherPrepError):
    """A stage failed on one session."""


class StoreError(EtherPrepError):
    """The store is missing or inconsistent."""


class StoreDamageError(StoreError):
    """Stored outputs of a stage are damaged; ``ether-prep verify --repair`` recomputes them."""


class LockError(EtherPrepError):
    """Another process holds the lock (a run writing the store, a model download)."""


class ExecutorError(EtherPrepError):
    """The executor cannot start: e.g. no Ray cluster at the address given, or a local Ray that fails to start."""


class Interrupted(KeyboardInterrupt):
    """The run was told to stop: Ctrl-C (SIGINT) or SIGTERM (``timeout``, Slurm's ``scancel``, ``docker stop``,
    systemd). A KeyboardInterrupt, so no ``except Exception`` records it as a stage's failure: the stage being
    computed stays ``running`` and the next run redoes it; ``finally`` blocks release the lock and workers."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


# What model hubs raise (huggingface_hub, requests, urllib3, the socket layer) when a model is not in the local
# cache and the hub cannot be reached: matched by class name, so this module imports none of them.
_UNREACHABLE = {"LocalEntryNotFoundError", "OfflineModeIsEnabled", "ConnectionError", "ConnectTimeout",
                "MaxRetryError", "NewConnectionError", "NameResolutionError", "gaierror", "ProxyError",
                "ReadTimeout", "Timeout", "URLError"}


def hub_unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it came from) says a model is not cached and no model hub answered."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if any(cls.__name__ in _UNREACHABLE for cls in type(e).__mro__):
            return True
        todo += [e.__cause__, e.__context__]
    return False


def not_local(model: str, exc: BaseException) -> str:
    """The message for a hub model that is not cached here while no model hub is reachable."""
    return (f"model {model!r} not found locally and no model hub reachable ({type(exc).__name__}: {exc}); run "
            f"with --pipeline cpu (every model offline), or fetch the model into the cache on a machine online")
