"""The product's own pages work under their Content-Security-Policy in a real browser.

The demo page's widget chats (its script, its shadow-root styles, its fetches and its
websocket all pass), and the agent console and the admin load, with the browser
reporting no violation. A blocked inline script shows the listener does hear them.
"""

from __future__ import annotations

from conversations.models import Conversation
from conversations.roles import ensure_agents_group
from tests.browser.widget import Widget, expect
from tests.scripted_llm import Script

PASSWORD = "a-password-for-this-test-0123"  # noqa: S105
REPLY_TOKENS = ["Lumen", " lamps", " ship", " within", " two", " days", "."]

# Every violation the page reports, kept in the page (set up before any page script).
RECORD_VIOLATIONS = """
    window.__cspViolations = [];
    document.addEventListener('securitypolicyviolation', (e) => {
        window.__cspViolations.push(
            `${e.effectiveDirective} blocked ${e.blockedURI || 'inline'} (${e.sample || ''})`);
    }, true);
"""


def _watched_page(new_context):
    context = new_context()
    context.add_init_script(RECORD_VIOLATIONS)
    return context.new_page()


def _assert_no_violations(page, new_context) -> None:
    assert page.evaluate("() => window.__cspViolations") == [], page.url
    reported = [line for line in new_context.errors.console if "Content Security Policy" in line]
    assert reported == []


def _assert_enforced(page) -> None:
    """An injected inline script does not run, and the violation is heard."""
    ran = page.evaluate(
        """() => {
            const s = document.createElement('script');
            s.textContent = 'window.__inlineRan = true';
            document.head.append(s);
            return window.__inlineRan === true;
        }"""
    )
    assert ran is False
    page.wait_for_function("() => window.__cspViolations.length > 0")
    violations = page.evaluate("() => window.__cspViolations")
    assert all(v.startswith("script-src-elem blocked inline") for v in violations), violations


def test_the_demo_widget_chats_under_the_policy(new_context, stack, demo_site, llm):
    llm.enqueue(Script(tokens=REPLY_TOKENS, token_interval=0.02))
    page = _watched_page(new_context)
    response = page.goto(stack.http_url + "/")
    assert "script-src 'self'" in response.headers["content-security-policy"]

    widget = Widget(page)
    widget.open()
    expect(widget.greeting).to_be_visible()
    # The shadow root's stylesheet applied: the panel is laid out as designed.
    assert widget.panel.evaluate("(el) => getComputedStyle(el).position") == "fixed"
    widget.send("How fast do you ship?")
    bubble = widget.wait_reply_complete()
    expect(bubble.locator(".sb-text")).to_have_text("".join(REPLY_TOKENS))
    expect(widget.panel).to_have_attribute("data-connection", "online")

    _assert_no_violations(page, new_context)
    _assert_enforced(page)


def test_the_agent_console_and_the_admin_load_under_the_policy(new_context, stack, demo_site):
    from django.contrib.auth.models import User

    agent = User.objects.create_user("sam", password=PASSWORD, is_staff=True, first_name="Sam")
    agent.groups.add(ensure_agents_group())
    conversation = Conversation.objects.create(site=demo_site, visitor_hash="0" * 64)

    # Logging in through the real form: Secure cookies from a loopback HTTP server.
    page = _watched_page(new_context)
    page.goto(stack.http_url + "/agent/")
    page.locator("#id_username").fill("sam")
    page.locator("#id_password").fill(PASSWORD)
    page.locator("input[type=submit]").click()
    page.wait_for_url(stack.http_url + "/agent/")
    expect(page.locator(".ac-connection")).to_have_attribute("data-state", "online")
    expect(page.locator(".ac-me")).to_contain_text("Sam")
    _assert_no_violations(page, new_context)

    for path in (
        "/admin/",
        "/admin/conversations/conversation/",
        f"/admin/conversations/conversation/{conversation.pk}/change/",
    ):
        response = page.goto(stack.http_url + path)
        assert response.status == 200, path
        assert "content-security-policy" in response.headers, path
        expect(page.locator("#content")).to_be_visible()
        _assert_no_violations(page, new_context)

    _assert_enforced(page)
