"""Browser fixtures: Debian's Chromium, driven by Playwright, against the real stack.

Playwright never downloads a browser here: it launches /usr/bin/chromium. Without
that binary (or without the playwright package) the browser tests are skipped on a
developer's machine and fail in CI (when the CI environment variable is set),
because a browser test skipped in CI would hide a broken widget.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
# Generous: a loaded CI machine may take seconds to start a conversation or a server.
EXPECT_TIMEOUT_MS = 20_000
LOOPBACK_PREFIXES = ("http://127.0.0.1", "ws://127.0.0.1", "http://localhost", "ws://localhost")


def in_ci() -> bool:
    return bool(os.environ.get("CI", "").strip())


def _missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install playwright)"
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        return f"{CHROMIUM} is not installed (apt-get install chromium)"
    return None


def pytest_runtest_setup(item: pytest.Item) -> None:
    # Before any fixture, so a machine without a browser does not start the stack.
    reason = _missing()
    if reason is None:
        return
    if in_ci():
        pytest.fail(f"browser tests cannot run in CI: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="package")
def browser(live_stack) -> Iterator[Any]:
    """One Chromium for the whole package (each test gets fresh contexts).

    It depends on live_stack only so that the servers' environment is captured
    before DJANGO_ALLOW_ASYNC_UNSAFE is set below: they must keep Django's check.
    """
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=EXPECT_TIMEOUT_MS)
    # Playwright's sync API keeps an asyncio loop running in this thread, which makes
    # Django refuse ORM calls (the test's own queries and the database flush between
    # tests). The servers run in other processes; only the test thread is affected.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    manager = sync_playwright()
    playwright = manager.start()
    try:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()
    finally:
        manager.__exit__(None, None, None)
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


class PageErrors:
    """Uncaught exceptions, console errors and dialogs seen in a test's pages."""

    def __init__(self) -> None:
        self.uncaught: list[str] = []
        self.console: list[str] = []
        self.dialogs: list[str] = []

    def watch(self, page: Any) -> None:
        page.on("pageerror", lambda error: self.uncaught.append(f"{page.url}: {error}"))
        page.on(
            "console",
            lambda msg: (
                msg.type in ("error", "warning")
                and self.console.append(f"{page.url}: [{msg.type}] {msg.text}")
            ),
        )

        def on_dialog(dialog: Any) -> None:
            self.dialogs.append(f"{dialog.type}: {dialog.message}")
            dialog.dismiss()

        page.on("dialog", on_dialog)


def _stub_external(route: Any) -> None:
    # Nothing leaves the machine: a link the widget opens lands on a stub page.
    route.fulfill(status=200, content_type="text/html", body="<title>stub</title><p>stub</p>")


@pytest.fixture
def new_context(browser, request) -> Iterator[Callable[..., Any]]:
    """Make a fresh browser context (own storage); its pages are watched for errors."""
    contexts: list[Any] = []
    errors = PageErrors()

    def make(**options: Any) -> Any:
        options.setdefault("viewport", {"width": 1280, "height": 800})
        context = browser.new_context(**options)
        context.route(lambda url: not url.startswith(LOOPBACK_PREFIXES), _stub_external)
        context.on("page", errors.watch)
        contexts.append(context)
        return context

    make.errors = errors  # type: ignore[attr-defined]
    yield make
    for context in contexts:
        context.close()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed and (errors.uncaught or errors.console):
        print("----- browser console -----")
        print("\n".join(errors.uncaught + errors.console))
    if errors.uncaught:
        pytest.fail("uncaught errors in the page:\n" + "\n".join(errors.uncaught), pytrace=False)


@pytest.fixture
def page(new_context) -> Any:
    return new_context().new_page()


@pytest.fixture
def demo_site(stack):
    """The site the demo page at `/` embeds, allowed on the stack's own origin."""
    from conversations.management.commands.ensure_demo import DEMO_SITE_NAME
    from conversations.models import Site

    return Site.objects.create(
        name=DEMO_SITE_NAME,
        allowed_origins=[stack.http_url],
        system_prompt="You are the Demo shop's support assistant.",
        temperature=0.2,
        max_tokens=300,
        # Token-by-token streaming (moderated at the end): these tests watch a reply
        # grow and a restart land mid-reply. test_moderation.py covers gate mode.
        moderation_mode=Site.ModerationMode.AFTER,
        moderation_provider=Site.ModerationProvider.OFFLINE,
    )


class StaticPages:
    """A plain HTTP server on loopback serving pages a test writes: a customer's site."""

    def __init__(self) -> None:
        self.pages: dict[str, str] = {}
        pages = self.pages

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                body = pages.get(self.path.split("?", 1)[0])
                payload = (body or "not found").encode()
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(payload)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.origin = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def add(self, path: str, html: str) -> str:
        self.pages[path] = html
        return self.origin + path

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def host_pages() -> Iterator[StaticPages]:
    pages = StaticPages()
    yield pages
    pages.stop()
