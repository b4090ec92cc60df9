"""The API's documentation pages work with no network: `/docs` (Swagger UI) and `/redoc` render in
headless Chromium while every request to anything but the server on loopback is refused, and with
an API key set they still open without one (the API behind them does not)."""

from __future__ import annotations

import os
import re

import httpx
import pytest
from shelfsight.search.http_docs import ASSET_PATHS

from tests.e2e.helpers import serving
from tests.e2e.storefront import BROWSER_ARGS, CHROMIUM


@pytest.mark.browser
@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian chromium not installed (make browser)")
def test_docs_and_redoc_render_offline(built_db):
    from playwright.sync_api import sync_playwright

    with serving("serve", "--db", built_db, health="/health") as base, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        refused: list[str] = []

        def local_only(route) -> None:
            if route.request.url.startswith(base + "/"):
                route.continue_()
            else:
                refused.append(route.request.url)
                route.abort()

        try:
            page = browser.new_page()
            page.route("**/*", local_only)
            page.goto(f"{base}/docs", wait_until="domcontentloaded")
            title = page.locator(".swagger-ui .info .title")
            title.wait_for(timeout=60_000)
            assert title.inner_text().startswith("Shelfsight")
            page.locator(".opblock-summary-path", has_text="/search").first.wait_for(timeout=30_000)

            page.goto(f"{base}/redoc", wait_until="domcontentloaded")
            page.get_by_role("heading", name=re.compile(r"^Shelfsight")).first.wait_for(timeout=60_000)
            page.get_by_text("/products/{product_id}/similar").first.wait_for(timeout=30_000)
            assert not refused, refused  # nothing was asked of any other host
        finally:
            browser.close()


def test_docs_and_their_scripts_need_no_key(built_db):
    with serving("serve", "--db", built_db, health="/docs", env={"SHELFSIGHT_API_KEY": "s3cret"}) as base:
        assert httpx.get(f"{base}/health").status_code == 401  # the API needs the key
        for path in ("/docs", "/redoc"):
            answer = httpx.get(base + path)
            assert answer.status_code == 200 and "default-src 'self'" in answer.headers["content-security-policy"]
        for path in ASSET_PATHS:
            answer = httpx.get(base + path)
            assert answer.status_code == 200 and len(answer.content) > 1000, path
        page = httpx.get(f"{base}/docs").text
        assert all(path in page for path in ASSET_PATHS if "redoc" not in path)
        assert "cdn." not in page and "cdn." not in httpx.get(f"{base}/redoc").text
