"""Logging: ether-prep's and every library's messages go to stderr through stdlib logging, so stdout carries
results only (summaries, ``status --json``, export paths) and can be piped.

Libraries that install their own console handlers (whisperx writes to stdout) are routed to the root handler
instead; Python warnings are logged too. Native libraries that print from C++ (MediaPipe/TFLite, glog) are
quietened through their environment variables unless the level is DEBUG.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys

__all__ = ["LIBRARY_LOGGERS", "adopt", "configure", "reapply"]

# Loggers of the libraries ether-prep drives; they log at the run's level, but never below WARNING unless
# the run asks for DEBUG (their INFO lines are chatter: "Performing voice activity detection ...").
# lightning sets its subpackages' loggers to INFO itself, so they are named here too.
LIBRARY_LOGGERS = ("whisperx", "faster_whisper", "pyannote", "lightning", "lightning.pytorch", "lightning.fabric",
                   "lightning_fabric", "pytorch_lightning", "speechbrain", "feat", "ray", "numba", "matplotlib",
                   "urllib3", "fsspec", "absl")
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure(level: str | int = "WARNING") -> None:
    """Send every log record to stderr at ``level`` (a name such as ``INFO`` or a number).

    The level is also put in ``ETHER_PREP_LOG_LEVEL`` so that worker processes (Ray actors) log alike.
    """
    numeric = level if isinstance(level, int) else logging.getLevelName(str(level).upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}; use DEBUG, INFO, WARNING, ERROR or CRITICAL")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(_FORMAT, datefmt="%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    library_level = numeric if numeric <= logging.DEBUG else max(numeric, logging.WARNING)
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        # A handler of our own keeps whisperx from installing its stdout one; records reach root's stderr.
        logger.handlers[:] = [logging.NullHandler()]
        logger.propagate = True
        logger.setLevel(library_level)
    logging.captureWarnings(True)
    os.environ["ETHER_PREP_LOG_LEVEL"] = logging.getLevelName(numeric)
    if numeric > logging.DEBUG:
        os.environ.setdefault("GLOG_minloglevel", "2")  # MediaPipe's C++ INFO/WARNING lines
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def reapply() -> None:
    """Route library loggers again, after models were loaded: some libraries (lightning) install their own
    console handler when first imported. Uses ``ETHER_PREP_LOG_LEVEL`` (WARNING when unset)."""
    configure(os.environ.get("ETHER_PREP_LOG_LEVEL", "WARNING"))


def adopt(module: str) -> None:
    """Import ``module``, a library that installs console handlers or logger levels of its own when first
    imported (lightning), then route its loggers through ours again (:func:`reapply`). Adapters call it
    before loading a model whose loading logs through that library."""
    importlib.import_module(module)
    reapply()
