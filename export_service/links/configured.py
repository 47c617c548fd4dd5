"""The links file the backend's helpers use, found from the environment.

``EXPORT_SERVICE_LINKS_FILE``, else the ``links`` section of the config file
named by ``EXPORT_SERVICE_CONFIG`` (with its environment overrides). One
:class:`LinkStore` per file, kept, so the helpers share its cache and lock.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

from ..config import CONFIG_ENV_VAR, ENV_PREFIX, load_settings
from .records import excerpt
from .store import DEFAULT_MAX_BYTES, LinkStore

log = logging.getLogger("export_service.links")  # obs/logs.py: LOGGER_NAMES

LINKS_FILE_ENV_VAR = ENV_PREFIX + "LINKS_FILE"


@functools.lru_cache(maxsize=8)
def _store_at(path: str, max_bytes: int = DEFAULT_MAX_BYTES) -> LinkStore:
    return LinkStore(Path(path), max_bytes)


@functools.lru_cache(maxsize=8)
def _links_of_config(config_path: str) -> tuple[str, int]:
    links = load_settings(Path(config_path), os.environ).links
    return str(links.file), links.max_bytes


def configured_store() -> LinkStore | None:
    """The store of ``EXPORT_SERVICE_LINKS_FILE``, else of the links file in
    the config named by ``EXPORT_SERVICE_CONFIG``; None (logged) when neither
    is set, or when the variable is a relative path (as the config, it must
    be absolute: a relative one would depend on the caller's folder).
    :class:`ConfigError` when the config cannot be loaded."""
    path = os.environ.get(LINKS_FILE_ENV_VAR, "").strip()
    if path and not os.path.isabs(path):
        log.error("%s must be an absolute path, not %s", LINKS_FILE_ENV_VAR, excerpt(path))
        return None
    if not path:
        config_path = os.environ.get(CONFIG_ENV_VAR, "").strip()
        if not config_path:
            log.error("no links file: set %s or %s", LINKS_FILE_ENV_VAR, CONFIG_ENV_VAR)
            return None
        return _store_at(*_links_of_config(config_path))
    return _store_at(path)
