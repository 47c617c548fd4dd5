"""The AIR backend's own two helpers, with its signatures.

:func:`link_param_to_render` and :func:`get_param_for_render` replace the
backend's ``app/air/export/links.py``: the same file format, written through
the same lock as the service's writes, and never raising, as the backend's
did.
"""

from __future__ import annotations

import logging

from ..core.run_ids import run_id_problem
from ..errors import ConfigError, ExportServiceError
from .configured import configured_store
from .records import excerpt

log = logging.getLogger("export_service.links")  # obs/logs.py: LOGGER_NAMES


def link_param_to_render(render_run_id: str, param_run_id: str) -> None:
    """Record ``render_run_id`` -> ``param_run_id`` (the AIR backend's helper).

    Both ids are stripped; nothing happens when either is empty. Either id
    that breaks the service's run-id rules (a separator, a control character,
    over 200 characters...) is logged and nothing is written: the file is
    shared, and the backend only ever generates valid ids. Best-effort, as
    the backend calls it: any failure (corrupt or unwritable file, no file
    configured) is logged, never raised.
    """
    try:
        render = (render_run_id or "").strip()
        param = (param_run_id or "").strip()
        if not render or not param:
            return
        for name, value in (("render_run_id", render), ("param_run_id", param)):
            problem = run_id_problem(value)
            if problem is not None:
                log.error(
                    "link %s -> %s not written: %s %s",
                    excerpt(render),
                    excerpt(param),
                    name,
                    problem,
                )
                return
        store = configured_store()
        if store is not None:
            store.write_link(render, param)
    except (ExportServiceError, ConfigError) as error:
        log.error("link %r -> %r not written: %s", render_run_id, param_run_id, error)
    except Exception:
        log.exception("link %r -> %r not written", render_run_id, param_run_id)


def get_param_for_render(render_run_id: str) -> str | None:
    """The param run linked to ``render_run_id`` (the AIR backend's helper).

    The id is stripped; None when it is empty, when there is no record, or
    when its ``param_run_id`` is not a string with a non-blank character.
    Any other string is returned as stored, as the backend's helper did, even
    one the service ignores as not a valid run id (the caller decides what
    to do with it). Never raises: failures are logged and give None.
    """
    try:
        render = (render_run_id or "").strip()
        store = configured_store() if render else None
        link = store.stored_link(render) if store is not None else None
        return link.param_run_id if link is not None and link.param_run_id.strip() else None
    except ConfigError as error:
        log.error("link of %r not read: %s", render_run_id, error)
        return None
    except Exception:
        log.exception("link of %r not read", render_run_id)
        return None
