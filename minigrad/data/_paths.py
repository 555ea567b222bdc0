"""Data-directory resolution and the errors shared by the data package."""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["DatasetNotFoundError", "DownloadError", "resolve_data_dir", "default_cache_dir"]

#: Environment variable naming the data directory (used when no ``root`` is given).
ENV_DATA_DIR = "MINIGRAD_DATA"


class DatasetNotFoundError(FileNotFoundError):
    """Raised when a dataset's files are missing and could not be (or were not allowed
    to be) downloaded. The message lists exactly which files to put where."""


class DownloadError(RuntimeError):
    """Raised when every mirror failed for a file; the message lists each URL tried and why."""


def default_cache_dir() -> Path:
    """The per-user cache directory used when neither ``root`` nor ``$MINIGRAD_DATA`` is set:
    ``$XDG_CACHE_HOME/minigrad`` if ``XDG_CACHE_HOME`` is set, else ``~/.cache/minigrad``."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "minigrad"


def resolve_data_dir(root: str | os.PathLike | None = None) -> Path:
    """Resolve the data directory: ``root`` if given, else ``$MINIGRAD_DATA``, else the
    user cache (:func:`default_cache_dir`). The result is absolute, ``~`` expanded; it need
    not exist. A data directory holds one folder per dataset (``DIR/mnist``, ``DIR/cifar10``)."""
    if root is None or str(root) == "":
        env = os.environ.get(ENV_DATA_DIR)
        root = env if env else default_cache_dir()
    return Path(os.path.expanduser(os.fspath(root))).absolute()
