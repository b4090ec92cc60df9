"""The HTTP API's documentation pages, ``/docs`` (Swagger UI) and ``/redoc``, with no CDN.

FastAPI's own pages load Swagger UI and ReDoc from a CDN, so they are blank on a machine without
internet. These load the same scripts from the installed ``fastapi-offline`` package (a
dependency of the ``server`` extra; it ships ``swagger-ui-bundle.js``, ``swagger-ui.css`` and
``redoc.standalone.js``), served here under ``/docs/assets/``. Google Fonts are left out of ReDoc,
the favicon is the package's, and a content policy keeps the pages to this server, so a browser
showing either page asks nothing of any other host.

The asset paths are exact routes, not a mounted folder, so the API-key guard can list them with
the pages it leaves open (``http_guard.OPEN_PATHS``).

Example::

    app = FastAPI(docs_url=None, redoc_url=None)
    add_offline_docs(app)
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, Response

DOCS_PATH = "/docs"
REDOC_PATH = "/redoc"
ASSETS_PACKAGE = "fastapi_offline"
# URL path -> file in the package's static folder, and its media type.
ASSETS = {
    f"{DOCS_PATH}/assets/swagger-ui-bundle.js": ("swagger-ui-bundle.js", "text/javascript"),
    f"{DOCS_PATH}/assets/swagger-ui.css": ("swagger-ui.css", "text/css"),
    f"{DOCS_PATH}/assets/redoc.standalone.js": ("redoc.standalone.js", "text/javascript"),
    f"{DOCS_PATH}/assets/favicon.png": ("favicon.png", "image/png"),
}
ASSET_PATHS = tuple(ASSETS)
_SWAGGER_JS, _SWAGGER_CSS, _REDOC_JS, _FAVICON = ASSET_PATHS
# The pages may load only what this server serves: ReDoc 2.5 adds a "Redocly" logo from its CDN to
# the menu (the image fails quietly offline); this policy stops the browser asking for it at all.
# Both pages start from an inline script and style their elements inline, ReDoc's search runs in a
# blob worker.
CONTENT_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'"
)
MISSING = (
    f"The API documentation pages need the {ASSETS_PACKAGE!r} package, which was not found: "
    "install it with `pip install 'shelfsight[server]'`. The schema itself is at /openapi.json."
)


def assets_folder() -> Path | None:
    """The installed package's static folder, or None when the package is missing."""
    try:
        folder = Path(str(resources.files(ASSETS_PACKAGE) / "static"))
    except ModuleNotFoundError:
        return None
    return folder if folder.is_dir() else None


def add_offline_docs(app: FastAPI) -> None:
    """``/docs`` and ``/redoc`` on ``app`` (built with ``docs_url=None, redoc_url=None``)."""
    folder = assets_folder()
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get(DOCS_PATH, include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        if folder is None:
            return HTMLResponse(MISSING, status_code=503)
        page = get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=_SWAGGER_JS,
            swagger_css_url=_SWAGGER_CSS,
            swagger_favicon_url=_FAVICON,
            swagger_ui_parameters={"validatorUrl": None},
        )
        page.headers["Content-Security-Policy"] = CONTENT_POLICY
        return page

    @app.get(REDOC_PATH, include_in_schema=False)
    def redoc() -> HTMLResponse:
        if folder is None:
            return HTMLResponse(MISSING, status_code=503)
        page = get_redoc_html(
            openapi_url=openapi_url,
            title=f"{app.title} - ReDoc",
            redoc_js_url=_REDOC_JS,
            redoc_favicon_url=_FAVICON,
            with_google_fonts=False,
        )
        page.headers["Content-Security-Policy"] = CONTENT_POLICY
        return page

    for path, (name, media_type) in ASSETS.items():
        app.add_api_route(path, _asset_route(folder, name, media_type), methods=["GET"], include_in_schema=False)


def _asset_route(folder: Path | None, name: str, media_type: str) -> Callable[[], Response]:
    def asset() -> Response:
        if folder is None:
            return HTMLResponse(MISSING, status_code=503)
        return FileResponse(folder / name, media_type=media_type)

    return asset
