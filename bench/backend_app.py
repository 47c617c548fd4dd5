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
from fastapi.responses import JSONResponse

from export_service.errors import ExportServiceError
from export_service.fastapi_proxy import export_proxy_router
from export_service.run_ids import check_render_run_id

app = FastAPI()

if os.environ.get("BACKEND_EXPORTS", "proxy") == "proxy":
    router = export_proxy_router(
        os.environ["EXPORT_SERVICE_URL"],
        token=os.environ.get("EXPORT_SERVICE_AUTH_TOKEN") or None,
    )
    app.include_router(router, prefix="/api")
else:
    # The README's route (nginx, X-Accel-Redirect), as it is there.
    @app.api_route("/api/air/export/zip/{render_run_id:path}", methods=["GET", "HEAD"])
    def export_zip(render_run_id: str, request: Request) -> Response:
        try:  # the service's own rule, here: nginx would resolve ".." in the redirect
            check_render_run_id(render_run_id)
        except ExportServiceError as error:
            body = {"detail": {"error": error.code, "message": error.message}}
            return JSONResponse(body, status_code=error.status)
        # The backend's own authorisation goes here; nginx does the streaming.
        target = "/_export_service/api/air/export/zip/" + quote(render_run_id, safe="")
        if request.url.query:
            target += "?" + request.url.query
        return Response(headers={"X-Accel-Redirect": target})
