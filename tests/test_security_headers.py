"""Production mode (DEBUG off) sends the security headers and secure cookies, and
`manage.py check --deploy` has nothing to say about it.

The stack's servers run with DEBUG=0 and otherwise default security settings, over
plain HTTP: cookie attributes are asserted as sent, not as a browser would keep them.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
from http.cookies import SimpleCookie

import httpx
import pytest
from django.conf import settings

from tests import stack as stack_module
from tests.stack import ROOT
from tests.visitor import ORIGIN

PASSWORD = "a-password-for-this-test-0123"  # noqa: S105
# Settings of this feature that a developer's environment must not leak into a test.
SECURITY_VARIABLES = (
    "SECURE_COOKIES",
    "TRUST_X_FORWARDED_PROTO",
    "SECURE_SSL_REDIRECT",
    "SECURE_HSTS_SECONDS",
    "SECURE_HSTS_INCLUDE_SUBDOMAINS",
    "SECURE_HSTS_PRELOAD",
)


# --- Helpers -------------------------------------------------------------------------


def _policy(response: httpx.Response) -> dict[str, list[str]]:
    """The Content-Security-Policy header as {directive: [sources]}."""
    header = response.headers.get("content-security-policy")
    assert header, f"no Content-Security-Policy on {response.request.url}"
    directives: dict[str, list[str]] = {}
    for part in header.split(";"):
        name, *sources = part.split()
        assert name not in directives, f"{name} twice in {header!r}"
        directives[name] = sources
    return directives


def _assert_page_headers(response: httpx.Response, host: str) -> None:
    url = response.request.url
    assert response.headers["content-type"].startswith("text/html"), url
    assert _policy(response) == {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'", "'unsafe-inline'"],
        "img-src": ["'self'", "data:"],
        "frame-ancestors": ["'none'"],
        "base-uri": ["'none'"],
        "form-action": ["'self'"],
        "object-src": ["'none'"],
        "connect-src": ["'self'", f"ws://{host}", f"wss://{host}"],
    }, url
    _assert_common_headers(response)
    assert response.headers["x-frame-options"] == "DENY", url
    assert response.headers["cross-origin-opener-policy"] == "same-origin", url


def _assert_common_headers(response: httpx.Response) -> None:
    url = response.request.url
    assert response.headers["x-content-type-options"] == "nosniff", url
    assert response.headers["referrer-policy"] == "same-origin", url
    # HSTS goes only with HTTPS responses; these came over plain HTTP.
    assert "strict-transport-security" not in response.headers, url


def _assert_no_inline_script(html: str) -> None:
    """Every <script> has a src or is a json_script data block (never executed)."""
    tags = re.findall(r"<script\b[^>]*>", html, re.I)
    assert tags
    for tag in tags:
        assert " src=" in tag or 'type="application/json"' in tag, tag
    assert not re.search(r"\son[a-z]+\s*=", html, re.I), "an inline event handler"


def _cookies(response: httpx.Response) -> dict[str, object]:
    """Morsels of every Set-Cookie header of a response, by cookie name."""
    morsels = {}
    for header in response.headers.get_list("set-cookie"):
        jar = SimpleCookie()
        jar.load(header)
        morsels.update(jar)
    return morsels


def _assert_secure_cookie(morsel, *, http_only: bool) -> None:
    assert morsel["secure"] is True, morsel.OutputString()
    assert bool(morsel["httponly"]) is http_only, morsel.OutputString()
    assert morsel["samesite"] == "Lax", morsel.OutputString()


def _staff_agent(username: str = "sam"):
    from django.contrib.auth.models import User

    from conversations.roles import ensure_agents_group

    user = User.objects.create_user(username, password=PASSWORD, is_staff=True)
    user.groups.add(ensure_agents_group())
    return user


def _base_env() -> dict[str, str]:
    drop = {"DJANGO_SETTINGS_MODULE", "DEBUG", "SECRET_KEY", "ALLOWED_HOSTS", *SECURITY_VARIABLES}
    return {key: value for key, value in os.environ.items() if key not in drop}


def _production_env(**overrides: str) -> dict[str, str]:
    env = _base_env()
    env.update(
        SECRET_KEY=secrets.token_urlsafe(50),
        DEBUG="false",
        ALLOWED_HOSTS="support.example.com",
        DATABASE_URL=stack_module.database_url(settings.DATABASES["default"]),
    )
    return {**env, **overrides}


def _check_deploy(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def _probe_settings(env: dict[str, str], *names: str) -> subprocess.CompletedProcess:
    probe = "; ".join(f"print(repr(s.{name}))" for name in names)
    return subprocess.run(
        [sys.executable, "-c", f"import django; django.setup(); from django.conf import "
         f"settings as s; {probe}"],
        cwd=ROOT, env={**env, "DJANGO_SETTINGS_MODULE": "supportbot.settings"},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


# --- The live server in production mode -------------------------------------------------


@pytest.fixture
def demo_site(stack):
    """The site the demo page at `/` embeds (without it the page has no widget tag)."""
    from conversations.management.commands.ensure_demo import DEMO_SITE_NAME
    from conversations.models import Site

    return Site.objects.create(name=DEMO_SITE_NAME, allowed_origins=[stack.http_url])


def test_pages_carry_the_policy_and_the_security_headers(stack, demo_site):
    host = stack.http_url.removeprefix("http://")
    demo = httpx.get(stack.http_url + "/")
    assert demo.status_code == 200 and demo_site.public_key in demo.text
    _assert_page_headers(demo, host)
    _assert_no_inline_script(demo.text)

    login = httpx.get(stack.http_url + "/admin/login/")
    assert login.status_code == 200
    _assert_page_headers(login, host)
    _assert_no_inline_script(login.text)

    # Nobody logged in: the console sends them to the login page, with the headers too.
    redirect = httpx.get(stack.http_url + "/agent/", follow_redirects=False)
    assert redirect.status_code == 302
    assert redirect.headers["location"].startswith("/admin/login/")
    _assert_page_headers(redirect, host)

    missing = httpx.get(stack.http_url + "/no-such-page/")
    assert missing.status_code == 404
    _assert_page_headers(missing, host)


def test_the_agent_console_page_carries_the_policy(stack):
    from django.test import Client

    client = Client()
    client.force_login(_staff_agent())
    cookie = client.cookies[settings.SESSION_COOKIE_NAME].value
    console = httpx.get(
        stack.http_url + "/agent/", headers={"Cookie": f"sessionid={cookie}"}
    )  # fmt: skip
    assert console.status_code == 200 and "ac-queue" in console.text
    _assert_page_headers(console, stack.http_url.removeprefix("http://"))
    _assert_no_inline_script(console.text)


def test_api_responses_are_nosniff_json_without_a_page_policy(stack, site):
    url = f"{stack.http_url}/api/v1/sites/{site.public_key}/widget"
    config = httpx.get(url, headers={"Origin": ORIGIN})
    assert config.status_code == 200
    assert config.headers["content-type"] == "application/json"
    assert config.headers["access-control-allow-origin"] == ORIGIN
    _assert_common_headers(config)
    # A policy governs documents only; JSON gets none.
    assert "content-security-policy" not in config.headers

    refused = httpx.post(
        stack.http_url + "/api/v1/conversations",
        json={"site_key": "nope"},
        headers={"Origin": ORIGIN},
    )
    assert refused.status_code == 403
    _assert_common_headers(refused)


def test_the_widget_script_stays_loadable_from_other_sites(stack):
    script = httpx.get(stack.http_url + "/static/supportbot/widget.js", headers={"Origin": ORIGIN})
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")
    assert script.headers["x-content-type-options"] == "nosniff"
    # Customers' pages load it cross-origin: no same-origin resource policy, and
    # WhiteNoise allows any origin (the script is public; the API checks origins).
    assert script.headers.get("cross-origin-resource-policy", "cross-origin") == "cross-origin"
    assert "cross-origin-embedder-policy" not in script.headers
    assert script.headers["access-control-allow-origin"] == "*"
    assert "content-security-policy" not in script.headers


def test_the_admin_login_sets_secure_http_only_lax_cookies(stack):
    _staff_agent()
    login_url = stack.http_url + "/admin/login/"
    form = httpx.get(login_url, params={"next": "/agent/"})
    csrf = _cookies(form)[settings.CSRF_COOKIE_NAME]
    # JavaScript never needs the CSRF cookie here, but Django keeps it readable by
    # default (CSRF_COOKIE_HTTPONLY buys nothing); Secure and SameSite are what count.
    _assert_secure_cookie(csrf, http_only=False)

    # httpx (like a browser) keeps Secure cookies off plain HTTP: send them by hand.
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text).group(1)
    logged_in = httpx.post(
        login_url + "?next=/agent/",
        data={"csrfmiddlewaretoken": token, "username": "sam", "password": PASSWORD},
        headers={"Cookie": f"{settings.CSRF_COOKIE_NAME}={csrf.value}"},
        follow_redirects=False,
    )
    assert logged_in.status_code == 302, logged_in.text[:2000]
    assert logged_in.headers["location"] == "/agent/"
    session = _cookies(logged_in)[settings.SESSION_COOKIE_NAME]
    _assert_secure_cookie(session, http_only=True)

    console = httpx.get(
        stack.http_url + "/agent/",
        headers={"Cookie": f"{settings.SESSION_COOKIE_NAME}={session.value}"},
    )
    assert console.status_code == 200 and "ac-queue" in console.text


def test_behind_a_tls_proxy_https_requests_get_hsts_and_http_is_redirected(stack):
    env = {**stack.env, "TRUST_X_FORWARDED_PROTO": "true", "SECURE_SSL_REDIRECT": "true"}
    server = stack_module.AsgiServer(env, stack.log_dir)
    try:
        https = {"X-Forwarded-Proto": "https"}
        page = httpx.get(server.url + "/", headers=https)
        assert page.status_code == 200
        assert page.headers["strict-transport-security"] == "max-age=31536000; includeSubDomains"
        assert "wss://127.0.0.1:" in page.headers["content-security-policy"]

        plain = httpx.get(server.url + "/admin/login/?next=/agent/", follow_redirects=False)
        assert plain.status_code == 301
        assert plain.headers["location"] == (
            f"https://127.0.0.1:{server.port}/admin/login/?next=/agent/"
        )
        # A probe that reaches the server directly over HTTP is answered, not redirected.
        probe = httpx.get(server.url + "/healthz", follow_redirects=False)
        assert probe.status_code in (200, 503)
        assert probe.headers["content-type"] == "application/json"
    finally:
        server.stop()


# --- Settings and `check --deploy` -------------------------------------------------------


def test_check_deploy_is_clean_in_production():
    result = _check_deploy(_production_env())
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout, result.stdout


@pytest.mark.parametrize(
    ("override", "warnings"),
    [
        ({"SECURE_COOKIES": "false"}, {"security.W012", "security.W016"}),
        ({"SECURE_HSTS_SECONDS": "0"}, {"security.W004"}),
        ({"SECURE_HSTS_INCLUDE_SUBDOMAINS": "false"}, {"security.W005"}),
    ],
    ids=["insecure-cookies", "no-hsts", "hsts-without-subdomains"],
)
def test_check_deploy_still_warns_when_a_setting_is_relaxed(override, warnings):
    result = _check_deploy(_production_env(**override))
    assert result.returncode != 0
    reported = set(re.findall(r"\(([a-z]+\.[A-Z]\d{3})\)", result.stdout + result.stderr))
    assert reported == warnings, result.stdout + result.stderr


def test_debug_mode_relaxes_cookies_and_hsts():
    env = _production_env(DEBUG="true")
    names = ("SESSION_COOKIE_SECURE", "CSRF_COOKIE_SECURE", "SECURE_HSTS_SECONDS")
    result = _probe_settings(env, *names)
    assert result.stdout.split() == ["False", "False", "0"], result.stderr
    result = _probe_settings(_production_env(), *names, "SECURE_PROXY_SSL_HEADER")
    assert result.stdout.split() == ["True", "True", "31536000", "None"], result.stderr
    result = _probe_settings(
        _production_env(TRUST_X_FORWARDED_PROTO="true"), "SECURE_PROXY_SSL_HEADER"
    )
    assert result.stdout.strip() == "('HTTP_X_FORWARDED_PROTO', 'https')", result.stderr


def test_hsts_preload_needs_subdomains_and_a_year():
    for override in (
        {"SECURE_HSTS_PRELOAD": "true", "SECURE_HSTS_INCLUDE_SUBDOMAINS": "false"},
        {"SECURE_HSTS_PRELOAD": "true", "SECURE_HSTS_SECONDS": "86400"},
    ):
        result = _probe_settings(_production_env(**override), "SECURE_HSTS_PRELOAD")
        assert result.returncode != 0, override
        assert "ImproperlyConfigured" in result.stderr and "SECURE_HSTS_PRELOAD" in result.stderr
    result = _check_deploy(_production_env(SECURE_HSTS_PRELOAD="true"))
    assert result.returncode == 0, result.stdout + result.stderr
