"""step_links.json: render_run_id -> param_run_id, shared with the AIR backend.

This package's own name holds the backend's public API, the drop-in helpers
its ``app/air/export/links.py`` imports (``from export_service.links import
get_param_for_render, link_param_to_render``). The rest, one concept a module:

- :mod:`.records`: the file's content parsed into links, with the backend's parser;
- :mod:`.splice`: one record written back into the file's own text;
- :mod:`.regular_files`: opening the file without blocking, regular files only;
- :mod:`.locked_writes`: the flock, the temp file and the rename;
- :mod:`.store`: :class:`~.store.LinkStore`, cached reads and locked writes of one file;
- :mod:`.configured`: the file the backend's helpers use, from the environment;
- :mod:`.backend`: the backend's two helpers.
"""

from .backend import get_param_for_render, link_param_to_render

__all__ = ["get_param_for_render", "link_param_to_render"]
