"""A stand-in for the AIR backend, run by bench/proxies.py and
bench/backend_proxy.py under uvicorn: the export router mounted as
docs/how-to/backend.md says, and a route of the backend's own (``/health``) whose answer time shows
whether the export routes stall the backend's event loop.

``BACKEND_EXPORTS=proxy`` (default): export_proxy_router streams everything;
``BACKEND_EXPORTS=accel``: the same router with ``accel_redirect_prefix``, so
a ZIP request that came through the recipe's nginx (``X-Export-Accel: nginx``)
is handed to nginx with X-Accel-Redirect. ``EXPORT_PROXY_MODULE=path.py``
mounts the ``export_proxy_router`` of another file instead (an older version
of fastapi_proxy.py, for a before/after comparison in one run).

    EXPORT_SERVICE_URL=http://127.0.0.1:8080 uvicorn bench.backend_app:app
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

from fastapi import FastAPI

from export_service.fastapi_proxy import export_proxy_router


def _router_factory() -> Any:
    path = os.environ.get("EXPORT_PROXY_MODULE")
    if not path:
        return export_proxy_router
    spec = importlib.util.spec_from_file_location("other_fastapi_proxy", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.export_proxy_router


app = FastAPI()
options: dict[str, Any] = {}
if os.environ.get("BACKEND_EXPORTS", "proxy") == "accel":
    options["accel_redirect_prefix"] = "/_export_service"
router = _router_factory()(
    os.environ["EXPORT_SERVICE_URL"],
    token=os.environ.get("EXPORT_SERVICE_AUTH_TOKEN") or None,
    **options,
)
app.include_router(router, prefix="/api")


@app.get("/health")
async def health() -> dict[str, str]:
    """The backend's own route: answers at once unless the loop is held up."""
    return {"status": "ok"}
