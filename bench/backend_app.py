"""A stand-in for the AIR backend, run by bench/proxies.py under uvicorn. With
``BACKEND_EXPORTS=proxy`` it mounts export_proxy_router (the backend forwards
the export routes); with ``BACKEND_EXPORTS=accel`` its ZIP route only answers
``X-Accel-Redirect`` and nginx streams from the service (README, nginx).

    EXPORT_SERVICE_URL=http://127.0.0.1:8080 BACKEND_EXPORTS=proxy \\
        uvicorn bench.backend_app:app
"""

from __future__ import annotations

import os
from urllib.parse import quote

from fastapi import FastAPI, Request, Response

from export_service.fastapi_proxy import export_proxy_router

app = FastAPI()

if os.environ.get("BACKEND_EXPORTS", "proxy") == "proxy":
    app.include_router(export_proxy_router(os.environ["EXPORT_SERVICE_URL"]), prefix="/api")
else:

    @app.get("/api/air/export/zip/{render_run_id}")
    def export_zip(render_run_id: str, request: Request) -> Response:
        # The backend's own authorisation goes here; nginx does the streaming.
        target = "/_export_service/api/air/export/zip/" + quote(render_run_id, safe="")
        if request.url.query:
            target += "?" + request.url.query
        return Response(headers={"X-Accel-Redirect": target})
