"""GET /docs: Swagger UI from local files, so the API's docs work on a machine without internet.

The assets are npm's swagger-ui-dist, pinned in console/frontend/package-lock.json and installed
by `make up`; FastAPI's default page would load them from a CDN.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

ASSETS_DIR = Path(__file__).resolve().parents[2] / "console" / "frontend" / "node_modules" / "swagger-ui-dist"
# Only these files are served: the page needs nothing else.
_ASSETS = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "favicon-32x32.png": "image/png",
}

router = APIRouter(include_in_schema=False)


@router.get("/docs")
async def docs(request: Request) -> HTMLResponse:
    if not (ASSETS_DIR / "swagger-ui-bundle.js").is_file():
        return HTMLResponse(
            "<h1>API docs not installed</h1><p>Swagger UI's files are missing from "
            f"{ASSETS_DIR}; <code>make up</code> installs them. The OpenAPI document is at "
            '<a href="/openapi.json">/openapi.json</a>.</p>',
            status_code=503,
        )
    return get_swagger_ui_html(
        openapi_url=request.app.openapi_url or "/openapi.json",
        title=f"{request.app.title} - docs",
        swagger_js_url="/docs/assets/swagger-ui-bundle.js",
        swagger_css_url="/docs/assets/swagger-ui.css",
        swagger_favicon_url="/docs/assets/favicon-32x32.png",
    )


@router.get("/docs/assets/{name}")
async def asset(name: str) -> FileResponse:
    media_type = _ASSETS.get(name)
    if media_type is None or not (ASSETS_DIR / name).is_file():
        raise HTTPException(status_code=404, detail="no such asset")
    return FileResponse(ASSETS_DIR / name, media_type=media_type, headers={"Cache-Control": "max-age=86400"})
