"""`/docs` (Swagger UI) and `/redoc` (ReDoc) with their JavaScript and CSS served from the
`fastapi-offline` package instead of FastAPI's default jsDelivr CDN: the pages work on a
machine without internet (an air-gapped practice server, CI), and their Content-Security-Policy
can name 'self' only, so no third-party script ever runs next to a pasted token.

FastAPI is created with `docs_url=None, redoc_url=None`; `install_api_docs` adds these routes.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.staticfiles import StaticFiles
from starlette.responses import HTMLResponse

DOCS_URL = "/docs"
REDOC_URL = "/redoc"
ASSETS_URL = "/docs/assets"
OAUTH2_REDIRECT_URL = "/docs/oauth2-redirect"
# Both pages start their bundle with an inline script and ReDoc runs a blob: worker; nothing
# else, and nothing from another origin (ReDoc's bundle hard-codes its "API docs by Redocly"
# badge image on cdn.redoc.ly: img-src 'self' keeps that request from ever leaving the browser).
DOCS_PAGE_CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
                 "img-src 'self' data:; font-src 'self'; worker-src 'self' blob:; connect-src 'self'; "
                 "frame-ancestors 'none'; base-uri 'none'; form-action 'self'")


def assets_dir() -> Path:
    """swagger-ui-bundle.js, swagger-ui.css, redoc.standalone.js and favicon.png of fastapi-offline."""
    return Path(str(files("fastapi_offline") / "static"))


def _page(response: HTMLResponse) -> HTMLResponse:
    response.headers["Content-Security-Policy"] = DOCS_PAGE_CSP
    response.headers["Cache-Control"] = "no-cache"
    return response


def install_api_docs(app: FastAPI) -> None:
    """Add /docs, /redoc and their assets to `app` (created with docs_url=None, redoc_url=None)."""
    openapi_url = app.openapi_url or "/openapi.json"
    app.mount(ASSETS_URL, StaticFiles(directory=assets_dir()), name="api-docs-assets")

    @app.get(DOCS_URL, include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        return _page(get_swagger_ui_html(
            openapi_url=openapi_url, title=f"{app.title} - API", oauth2_redirect_url=OAUTH2_REDIRECT_URL,
            swagger_js_url=f"{ASSETS_URL}/swagger-ui-bundle.js", swagger_css_url=f"{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_URL}/favicon.png",
            swagger_ui_parameters={"persistAuthorization": False, "tryItOutEnabled": False}))

    @app.get(OAUTH2_REDIRECT_URL, include_in_schema=False)
    def swagger_ui_redirect() -> HTMLResponse:
        return _page(get_swagger_ui_oauth2_redirect_html())

    @app.get(REDOC_URL, include_in_schema=False)
    def redoc() -> HTMLResponse:
        return _page(get_redoc_html(openapi_url=openapi_url, title=f"{app.title} - API reference",
                                    redoc_js_url=f"{ASSETS_URL}/redoc.standalone.js",
                                    redoc_favicon_url=f"{ASSETS_URL}/favicon.png", with_google_fonts=False))
