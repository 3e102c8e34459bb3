"""The visitor HTTP API as an outside client sees it (docs/protocol.md, "HTTP")."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import datetime

import httpx

from conversations import visitors
from conversations.models import Conversation, Message, Site
from tests.protocol_helpers import (
    FOREIGN_ORIGIN,
    away_from_window_edge,
    create_conversation,
    is_assistant_done,
)
from tests.scripted_llm import Script
from tests.stack import AsgiServer
from tests.visitor import ORIGIN, Visitor, run


def _messages_url(stack, conversation_id: str) -> str:
    return f"{stack.http_url}/api/v1/conversations/{conversation_id}/messages"


def _get_messages(stack, conversation_id: str, *, auth: str | None, **params) -> httpx.Response:
    headers = {"Origin": ORIGIN}
    if auth is not None:
        headers["Authorization"] = auth
    return httpx.get(_messages_url(stack, conversation_id), params=params, headers=headers)


def _exchange(visitor: Visitor, conversation: dict, texts: list[str]) -> None:
    """Send each text and wait for its complete reply."""

    async def scenario():
        async with visitor.socket(conversation) as socket:
            for text in texts:
                await socket.say(text)
                await socket.until(is_assistant_done)

    run(scenario())


# --- POST /api/v1/conversations ---------------------------------------------------


def test_it_creates_a_conversation_and_issues_a_visitor_token(stack, site):
    response = create_conversation(stack.http_url, {"site_key": site.public_key})

    assert response.status_code == 201, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    data = response.json()
    assert set(data) >= {"conversation", "visitor_token", "websocket_url"}
    conversation = data["conversation"]
    assert set(conversation) >= {"id", "status", "created_at"}
    assert isinstance(conversation["id"], str)
    assert conversation["status"] == "bot"
    assert datetime.fromisoformat(conversation["created_at"]).tzinfo is not None
    assert data["websocket_url"] == f"/ws/v1/conversations/{conversation['id']}/"
    token = data["visitor_token"]
    assert isinstance(token, str) and token
    assert visitors.site_key_of(token) == site.public_key

    stored = Conversation.objects.get(pk=conversation["id"])
    assert stored.site == site
    assert stored.status == Conversation.Status.BOT and stored.seq == 0
    # Only a hash of the token is kept.
    assert stored.visitor_hash == hashlib.sha256(token.encode()).hexdigest()
    assert token not in stored.visitor_hash


def test_it_returns_a_valid_token_of_the_same_site_unchanged(stack, site):
    first = create_conversation(stack.http_url, {"site_key": site.public_key}).json()
    token = first["visitor_token"]

    second = create_conversation(
        stack.http_url, {"site_key": site.public_key, "visitor_token": token}
    )

    assert second.status_code == 201, second.text
    assert second.json()["visitor_token"] == token
    assert second.json()["conversation"]["id"] != first["conversation"]["id"]
    hashes = set(Conversation.objects.values_list("visitor_hash", flat=True))
    assert hashes == {hashlib.sha256(token.encode()).hexdigest()}


def test_it_replaces_a_token_of_another_site_or_a_forged_one(stack, site):
    other_site = Site.objects.create(name="Other shop", allowed_origins=[ORIGIN])
    foreign = create_conversation(stack.http_url, {"site_key": other_site.public_key}).json()
    own = create_conversation(stack.http_url, {"site_key": site.public_key}).json()
    foreign_token = foreign["visitor_token"]
    # Same site key, signature of another token: must not be accepted.
    forged = own["visitor_token"].rsplit(":", 1)[0] + ":" + foreign_token.rsplit(":", 1)[1]

    odd = ["not-a-token", "x" * 5000, "a\u0000b", "\ud800", f"{own['visitor_token']}\ud800"]
    for sent in (foreign_token, forged, *odd):
        response = create_conversation(
            stack.http_url, {"site_key": site.public_key, "visitor_token": sent}
        )
        assert response.status_code == 201, response.text
        issued = response.json()["visitor_token"]
        assert issued not in (sent, own["visitor_token"])
        assert visitors.site_key_of(issued) == site.public_key
        stored = Conversation.objects.get(pk=response.json()["conversation"]["id"])
        assert stored.visitor_hash == hashlib.sha256(issued.encode()).hexdigest()


def test_it_answers_400_to_a_body_it_cannot_use(stack, site):
    key = site.public_key
    bodies = {
        "not-json": b"{not json",
        "empty": b"",
        "not-utf8": b"\xff\xfe{}",
        "array": b"[]",
        "string": b'"site_key"',
        "null": b"null",
        "deeply-nested": b"[" * 5000 + b"]" * 5000,
        "over-16-kib": json.dumps({"site_key": key, "padding": "x" * 17 * 1024}).encode(),
        "numeric-token": json.dumps({"site_key": key, "visitor_token": 123}).encode(),
        "list-token": json.dumps({"site_key": key, "visitor_token": ["t"]}).encode(),
        "object-token": json.dumps({"site_key": key, "visitor_token": {}}).encode(),
    }

    answers = {
        name: create_conversation(stack.http_url, content=content)
        for name, content in bodies.items()
    }

    assert {name: r.status_code for name, r in answers.items()} == dict.fromkeys(bodies, 400)
    assert {r.json()["error"]["code"] for r in answers.values()} == {"bad_request"}
    # Far over Django's own upload limit as well: still a 400, not a crash.
    huge = create_conversation(stack.http_url, content=b'{"pad": "' + b"x" * 3_000_000 + b'"}')
    assert huge.status_code == 400
    assert not Conversation.objects.exists()


def test_it_answers_403_to_a_site_key_it_does_not_know(stack, site):
    keys = {
        "unknown": "site_unknown",
        "empty": "",
        "nul": "a\u0000b",
        "lone-surrogate": "\ud800",
        "65-chars": "k" * 65,
        "5000-chars": "k" * 5000,
        "key-plus-nul": site.public_key + "\u0000",
    }

    answers = {
        name: create_conversation(stack.http_url, {"site_key": key}) for name, key in keys.items()
    }

    assert {name: r.status_code for name, r in answers.items()} == dict.fromkeys(keys, 403)
    assert {r.json()["error"]["code"] for r in answers.values()} == {"forbidden"}
    # A site key that is not a string at all is a bad body.
    for body in ({"site_key": 7}, {"site_key": None}, {}):
        response = create_conversation(stack.http_url, body)
        assert response.status_code == 400, body
        assert response.json()["error"]["code"] == "bad_request"
    assert not Conversation.objects.exists()


def test_a_browser_on_an_allowed_origin_can_read_the_errors(stack, site):
    unknown_key = create_conversation(stack.http_url, {"site_key": "site_unknown"}, origin=ORIGIN)
    bad_body = httpx.post(
        f"{stack.http_url}/api/v1/conversations", content=b"[", headers={"Origin": ORIGIN}
    )
    no_token = httpx.get(
        f"{stack.http_url}/api/v1/conversations/{uuid.uuid4()}/messages",
        headers={"Origin": ORIGIN},
    )
    for response, status in ((unknown_key, 403), (bad_body, 400), (no_token, 401)):
        assert response.status_code == status
        assert response.headers["Access-Control-Allow-Origin"] == ORIGIN


def test_it_refuses_a_foreign_origin_with_403_and_no_cors_headers(stack, site):
    response = create_conversation(
        stack.http_url, {"site_key": site.public_key}, origin=FOREIGN_ORIGIN
    )

    assert response.status_code == 403, response.text
    assert response.json()["error"]["code"] == "forbidden"
    assert "Access-Control-Allow-Origin" not in response.headers
    assert not Conversation.objects.exists()


def test_it_sends_cors_headers_to_an_allowed_origin_only(stack, site):
    allowed = create_conversation(stack.http_url, {"site_key": site.public_key})
    assert allowed.status_code == 201
    assert allowed.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "origin" in allowed.headers["Vary"].lower()

    no_origin = create_conversation(stack.http_url, {"site_key": site.public_key}, origin=None)
    assert no_origin.status_code == 201
    assert "Access-Control-Allow-Origin" not in no_origin.headers

    conversation = allowed.json()
    listing = _get_messages(
        stack, conversation["conversation"]["id"], auth=f"Bearer {conversation['visitor_token']}"
    )
    assert listing.status_code == 200
    assert listing.headers["Access-Control-Allow-Origin"] == ORIGIN


def test_it_answers_a_cors_preflight_for_allowed_origins_only(stack, site):
    conversation_id = str(uuid.uuid4())
    targets = [
        (f"{stack.http_url}/api/v1/conversations", "POST", "content-type"),
        (_messages_url(stack, conversation_id), "GET", "authorization"),
    ]
    for url, method, header in targets:
        allowed = httpx.options(
            url,
            headers={
                "Origin": ORIGIN,
                "Access-Control-Request-Method": method,
                "Access-Control-Request-Headers": header,
            },
        )
        assert 200 <= allowed.status_code < 300, allowed.text
        assert allowed.headers["Access-Control-Allow-Origin"] == ORIGIN
        assert method in allowed.headers["Access-Control-Allow-Methods"]
        assert header in allowed.headers["Access-Control-Allow-Headers"].lower()

        foreign = httpx.options(
            url, headers={"Origin": FOREIGN_ORIGIN, "Access-Control-Request-Method": method}
        )
        assert "Access-Control-Allow-Origin" not in foreign.headers
        assert "Access-Control-Allow-Methods" not in foreign.headers
    assert not Conversation.objects.exists()


def test_it_limits_conversations_per_address_with_429_and_retry_after(stack, site):
    # A server of its own with a small limit; the shared one is set high for other tests.
    server = AsgiServer(dict(stack.env, RATE_CONVERSATIONS_PER_HOUR="3"), stack.log_dir)
    try:
        away_from_window_edge(3600, margin=10)
        statuses = [
            create_conversation(server.url, {"site_key": site.public_key}).status_code
            for _ in range(3)
        ]
        limited = create_conversation(server.url, {"site_key": site.public_key})
    finally:
        server.stop()

    assert statuses == [201, 201, 201]
    assert limited.status_code == 429, limited.text
    assert limited.json()["error"]["code"] == "rate_limited"
    retry_after = limited.headers["Retry-After"]
    assert retry_after.isdigit() and 0 < int(retry_after) <= 3600
    assert limited.headers["Access-Control-Allow-Origin"] == ORIGIN
    # A browser may read the header cross-origin, and the body says it too.
    assert "Retry-After" in limited.headers["Access-Control-Expose-Headers"]
    assert limited.json()["error"]["retry_after"] == int(retry_after)
    assert Conversation.objects.count() == 3


# --- GET /api/v1/conversations/<id>/messages ---------------------------------------


def test_it_lists_messages_oldest_first_with_last_seq_and_status(stack, visitor, llm):
    llm.enqueue(Script(tokens=["First", " answer"]), match="first question")
    llm.enqueue(Script(tokens=["Second", " answer"]), match="second question")
    conversation = visitor.start()
    conversation_id = conversation["conversation"]["id"]
    _exchange(visitor, conversation, ["first question", "second question"])

    response = visitor.messages(conversation_id)

    assert response.status_code == 200, response.text
    data = response.json()
    assert data["last_seq"] == 4 and data["status"] == "bot"
    messages = data["messages"]
    assert [m["seq"] for m in messages] == [1, 2, 3, 4]
    assert [(m["role"], m["text"], m["status"]) for m in messages] == [
        ("visitor", "first question", "complete"),
        ("assistant", "First answer", "complete"),
        ("visitor", "second question", "complete"),
        ("assistant", "Second answer", "complete"),
    ]
    stored = list(Message.objects.filter(conversation_id=conversation_id).order_by("seq"))
    for listed, row in zip(messages, stored, strict=True):
        assert listed["id"] == str(row.pk)
        assert datetime.fromisoformat(listed["created_at"]) == row.created_at
        assert listed["sources"] == []
        if row.role == Message.Role.VISITOR:
            assert listed["client_id"] == row.client_id and row.client_id
        else:
            assert "client_id" not in listed


def test_it_lists_only_messages_after_after_seq(stack, visitor, llm):
    conversation = visitor.start()
    conversation_id = conversation["conversation"]["id"]
    _exchange(visitor, conversation, ["one", "two"])
    auth = f"Bearer {visitor.token}"

    for after_seq, expected in [(0, [1, 2, 3, 4]), (2, [3, 4]), (3, [4]), (4, []), (99, [])]:
        response = _get_messages(stack, conversation_id, auth=auth, after_seq=after_seq)
        assert response.status_code == 200, response.text
        assert [m["seq"] for m in response.json()["messages"]] == expected
        assert response.json()["last_seq"] == 4
    default = _get_messages(stack, conversation_id, auth=auth)
    assert [m["seq"] for m in default.json()["messages"]] == [1, 2, 3, 4]


def test_it_answers_400_to_a_bad_after_seq(stack, visitor):
    conversation_id = visitor.start()["conversation"]["id"]
    auth = f"Bearer {visitor.token}"
    bad = ["-1", "abc", "1.5", "0x10", "", " 1", "\u00b2", "\u0661", "1" * 40]

    answers = {
        value: _get_messages(stack, conversation_id, auth=auth, after_seq=value) for value in bad
    }

    assert {value: r.status_code for value, r in answers.items()} == dict.fromkeys(bad, 400)
    assert {r.json()["error"]["code"] for r in answers.values()} == {"bad_request"}


def test_it_answers_401_without_a_valid_bearer_token(stack, visitor):
    conversation_id = visitor.start()["conversation"]["id"]
    token = visitor.token
    tampered = token[:-3] + ("AAA" if not token.endswith("AAA") else "BBB")

    for auth in [None, "", "Bearer", f"Basic {token}", f"Token {token}", f"Bearer  {tampered}",
                 "Bearer not-a-token", f"Bearer {tampered}"]:  # fmt: skip
        response = _get_messages(stack, conversation_id, auth=auth)
        assert response.status_code == 401, (auth, response.text)
        assert response.json()["error"]["code"] == "unauthorized"


def test_it_answers_404_alike_for_someone_elses_conversation_and_an_unknown_id(
    stack, site, visitor
):
    owner = Visitor(stack.http_url, stack.ws_url, site.public_key)
    owners_conversation = owner.start()["conversation"]["id"]
    visitor.start()
    other_site = Site.objects.create(name="Other shop", allowed_origins=[ORIGIN])
    other_sites_visitor = Visitor(stack.http_url, stack.ws_url, other_site.public_key)
    other_sites_visitor.start()

    responses = [
        _get_messages(stack, owners_conversation, auth=f"Bearer {visitor.token}"),
        _get_messages(stack, owners_conversation, auth=f"Bearer {other_sites_visitor.token}"),
        _get_messages(stack, str(uuid.uuid4()), auth=f"Bearer {visitor.token}"),
    ]

    assert [r.status_code for r in responses] == [404, 404, 404]
    bodies = {json.dumps(r.json(), sort_keys=True) for r in responses}
    assert len(bodies) == 1, bodies
    assert owner.messages(owners_conversation).status_code == 200
