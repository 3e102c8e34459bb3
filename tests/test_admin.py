"""The admin as superusers and agents use it: read-only transcripts, tickets and their
actions and exports, who may see what, and escaping of everything people and the
model wrote."""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass

import pytest
from django.contrib.auth.models import Group, Permission
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils.html import escape

from conversations.models import (
    Conversation,
    InternalNote,
    Message,
    Site,
    StatusChange,
    Ticket,
)
from conversations.roles import AGENTS_GROUP, ensure_agents_group

PAYLOADS = [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    '"><svg onload=alert(1)>',
    "javascript:alert(1)",
]
# The ones that HTML would run or parse if unescaped.
MARKUP_PAYLOADS = PAYLOADS[:3]


def evil(label: str) -> str:
    """A recognisable text carrying every payload."""
    return f"{label} " + " ".join(PAYLOADS)


# Text cells a spreadsheet would run as formulas, and what the CSV must hold instead.
FORMULAS = {
    '=HYPERLINK("http://evil.example","x")': '\'=HYPERLINK("http://evil.example","x")',
    "+1+2": "'+1+2",
    "-3+4": "'-3+4",
    "@SUM(A1:A2)": "'@SUM(A1:A2)",
    "\t=1": "'\t=1",
    "\r=1": "'\r=1",
    "plain question": "plain question",
}

CHANGELIST = {
    "conversation": reverse("admin:conversations_conversation_changelist"),
    "ticket": reverse("admin:conversations_ticket_changelist"),
    "site": reverse("admin:conversations_site_changelist"),
}


@dataclass
class World:
    superuser: object
    agent: object
    sam: object
    site: Site
    conversation: Conversation
    formulas: Conversation
    ticket: Ticket
    old_ticket: Ticket
    formula_ticket: Ticket
    note: InternalNote
    messages: dict[str, Message]


def add_message(conversation: Conversation, seq: int, role: str, text: str, **fields) -> Message:
    return Message.objects.create(
        conversation=conversation, seq=seq, role=role, text=text, **fields
    )


@pytest.fixture
def world(site, django_user_model) -> World:
    group = ensure_agents_group()
    superuser = django_user_model.objects.create_superuser("root", "root@example.com", "pw")
    agent = django_user_model.objects.create_user(
        "agent", first_name=evil("agent-first"), last_name=evil("agent-last"), is_staff=True
    )
    agent.groups.add(group)
    # create_user does not validate usernames: a hostile one still has to render safely.
    sam = django_user_model.objects.create_user(
        "sam" + PAYLOADS[1], first_name=evil("sam-first"), last_name="Smith", is_staff=True
    )
    sam.groups.add(group)

    site.name = evil("site")
    site.save()
    conversation = Conversation.objects.create(
        site=site,
        visitor_hash="a" * 64,
        status=Conversation.Status.AGENT,
        handoff_requested=True,
        handoff_reason=evil("conv-handoff"),
        moderation_flagged=True,
        assigned_agent=sam,
        seq=10,
    )
    messages = {
        "visitor": add_message(
            conversation, 1, "visitor", evil("visitor-text"),
            moderation="passed", moderation_provider="offline",
            handoff_requested=True, handoff_reason=evil("msg-handoff"),
        ),
        "answer": add_message(
            conversation, 2, "assistant", evil("answer-text"),
            moderation="passed", model="test-model", prompt_tokens=120, completion_tokens=45,
        ),
        "withdrawn": add_message(
            conversation, 4, "assistant", evil("WITHHELD-text"),
            status="withdrawn", moderation="flagged",
            moderation_categories=["harassment", evil("category")],
            moderation_scores={"harassment": 0.97}, moderation_provider="api",
            prompt_tokens=30, completion_tokens=20, usage_estimated=True,
        ),
        "failed": add_message(
            conversation, 5, "assistant", evil("failed-text"),
            status="failed", error_code="taken_over",
        ),
        "system": add_message(conversation, 7, "system", evil("system-text"), moderation="passed"),
        "agent": add_message(
            conversation, 8, "agent", evil("agent-text"), author=sam, moderation="passed"
        ),
        "streaming": add_message(
            conversation, 9, "assistant", evil("streaming-text"), status="streaming"
        ),
    }  # fmt: skip
    StatusChange.objects.create(
        conversation=conversation, seq=3, status="waiting", reason=evil("waiting-reason")
    )
    StatusChange.objects.create(
        conversation=conversation, seq=6, status="agent", reason=evil("taken-reason"), actor=sam
    )
    ticket = Ticket.objects.create(
        conversation=conversation,
        subject=evil("ticket-subject"),
        reason=evil("ticket-reason"),
        priority=Ticket.Priority.HIGH,
    )
    old_ticket = Ticket.objects.create(
        conversation=conversation, subject="earlier ticket", status=Ticket.Status.RESOLVED
    )
    note = InternalNote.objects.create(
        conversation=conversation, ticket=ticket, author=sam, text=evil("note-text")
    )

    formulas = Conversation.objects.create(site=site, visitor_hash="b" * 64, seq=len(FORMULAS))
    for seq, text in enumerate(FORMULAS, start=1):
        add_message(formulas, seq, "visitor", text, moderation="passed")
    formula_ticket = Ticket.objects.create(conversation=formulas, subject="formulas")
    return World(
        superuser, agent, sam, site, conversation, formulas, ticket, old_ticket, formula_ticket,
        note, messages,
    )  # fmt: skip


def as_user(client, user):
    client.force_login(user)
    return client


def assert_escaped(html: str, *labels: str) -> None:
    """No payload is live markup, and each labelled text is there, escaped."""
    for payload in MARKUP_PAYLOADS:
        assert payload not in html
    assert not re.search(r"(href|src|action)\s*=\s*[\"']?\s*javascript:", html, re.I)
    assert not re.search(r"<(script|img|svg)[^>]*alert\(1\)", html, re.I)
    for label in labels:
        assert escape(evil(label)) in html, f"{label!r} missing or not escaped"


def change_url(model: str, pk) -> str:
    return reverse(f"admin:conversations_{model}_change", args=[pk])


def post_action(client, model: str, action: str, pks) -> object:
    return client.post(CHANGELIST[model], {"action": action, "_selected_action": list(pks)})


@pytest.fixture(params=["superuser", "agent"])
def staff(request, world, client):
    return as_user(client, getattr(world, request.param))


def test_the_conversation_page_is_a_readable_escaped_thread(staff, world):
    response = staff.get(change_url("conversation", world.conversation.pk))
    assert response.status_code == 200
    html = response.content.decode()
    assert_escaped(
        html,
        "site", "conv-handoff", "visitor-text", "msg-handoff", "answer-text", "WITHHELD-text",
        "category", "failed-text", "system-text", "agent-text", "streaming-text",
        "waiting-reason", "taken-reason", "note-text", "ticket-subject", "sam-first",
    )  # fmt: skip
    # A readable thread, not a form: nothing here can be edited or saved.
    assert "Transcript" in html
    assert 'name="_save"' not in html
    assert "<textarea" not in html
    # The withheld answer is shown to staff, and marked as such.
    assert "Withdrawn — not shown to the visitor" in html
    assert "Streaming — still being written" in html
    assert "Failed (taken_over)" in html
    assert "Tokens: 120 prompt + 45 completion = 165" in html
    assert "Tokens: 30 prompt + 20 completion = 50 (estimated)" in html
    assert ">flagged<" in html and "harassment" in html
    # The thread follows seq: the status changes sit between the messages.
    positions = [html.index(f'id="seq-{seq}"') for seq in range(1, 10)]
    assert positions == sorted(positions)
    # Agents may not open sites or users: no links to them.
    assert reverse("admin:conversations_site_change", args=[world.site.pk]) not in html
    assert not re.search(r"/admin/auth/user/\d+/", html)
    assert world.site.prompt_canary not in html


def test_the_conversation_list_shows_counts_tokens_and_escapes(staff, world):
    # With one site Django hides the site filter.
    Site.objects.create(name="Other shop")
    response = staff.get(CHANGELIST["conversation"])
    assert response.status_code == 200
    html = response.content.decode()
    assert_escaped(html, "site", "conv-handoff", "sam-first")
    row = _row(html, world.conversation)
    assert '<td class="field-message_count">7</td>' in row
    # 120 + 45 for the answer, 30 + 20 for the withdrawn one.
    assert '<td class="field-tokens">215</td>' in row
    filters = ["status__exact", "handoff_requested__exact", "moderation_flagged__exact",
               "site__id__exact", "assigned_agent__id__exact"]  # fmt: skip
    for name in filters:
        assert f"?{name}=" in html, f"no {name} filter"


def test_the_conversation_filters_narrow_the_list(staff, world):
    other = Site.objects.create(name="Other shop")
    elsewhere = Conversation.objects.create(site=other, visitor_hash="c" * 64)
    mine, theirs = (change_url("conversation", c.pk) for c in (world.conversation, elsewhere))
    cases = {
        "site__id__exact": (other.pk, theirs, mine),
        "status__exact": ("agent", mine, theirs),
        "handoff_requested__exact": ("1", mine, theirs),
        "moderation_flagged__exact": ("1", mine, theirs),
        "assigned_agent__id__exact": (world.sam.pk, mine, theirs),
    }
    for name, (value, shown, hidden) in cases.items():
        html = staff.get(CHANGELIST["conversation"], {name: value}).content.decode()
        assert shown in html and hidden not in html, name


def _row(html: str, conversation: Conversation) -> str:
    """The changelist row of this conversation."""
    start = html.index(change_url("conversation", conversation.pk))
    return html[start : html.index("</tr>", start)]


def test_searching_messages_lists_each_conversation_once_with_true_totals(staff, world):
    # "alert" is in every message of the first conversation: seven joined matches.
    response = staff.get(CHANGELIST["conversation"], {"q": "alert"})
    html = response.content.decode()
    assert response.status_code == 200
    assert html.count(change_url("conversation", world.conversation.pk)) == 1
    assert change_url("conversation", world.formulas.pk) not in html
    row = _row(html, world.conversation)
    assert '<td class="field-message_count">7</td>' in row
    assert '<td class="field-tokens">215</td>' in row
    # Withdrawn text is searchable by staff.
    found = staff.get(CHANGELIST["conversation"], {"q": "WITHHELD"}).content.decode()
    assert change_url("conversation", world.conversation.pk) in found


def test_the_conversation_list_costs_the_same_queries_for_more_rows(client, world):
    as_user(client, world.agent)

    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert client.get(CHANGELIST["conversation"]).status_code == 200
        return len(captured)

    before = queries()
    for n in range(5):
        extra = Conversation.objects.create(
            site=world.site, visitor_hash=f"{n}" * 64, assigned_agent=world.sam
        )
        add_message(extra, 1, "visitor", "hi", prompt_tokens=1)
    assert queries() == before


def test_conversations_cannot_be_added_changed_or_deleted(staff, world):
    url = change_url("conversation", world.conversation.pk)
    assert staff.get(reverse("admin:conversations_conversation_add")).status_code == 403
    staff.post(url, {"status": "closed", "handoff_reason": "changed"})
    world.conversation.refresh_from_db()
    assert world.conversation.status == Conversation.Status.AGENT
    assert world.conversation.handoff_reason == evil("conv-handoff")
    delete = reverse("admin:conversations_conversation_delete", args=[world.conversation.pk])
    assert staff.post(delete, {"post": "yes"}).status_code == 403
    assert Conversation.objects.filter(pk=world.conversation.pk).exists()


def test_the_ticket_pages_render_escaped(staff, world):
    listing = staff.get(CHANGELIST["ticket"])
    assert listing.status_code == 200
    html = listing.content.decode()
    assert_escaped(html, "ticket-subject", "ticket-reason")
    assert change_url("conversation", world.conversation.pk) in html
    page = staff.get(change_url("ticket", world.ticket.pk))
    assert page.status_code == 200
    html = page.content.decode()
    assert_escaped(html, "ticket-subject", "ticket-reason", "note-text", "sam-first")
    assert change_url("conversation", world.conversation.pk) in html
    # Only status, priority, assignee and a new note are editable.
    for name in ("status", "priority", "assignee", "notes-1-text"):
        assert f'name="{name}"' in html
    # Subject, reason, conversation and written notes are a record.
    for name in ("subject", "reason", "conversation", "resolved_at", "notes-0-text"):
        assert f'name="{name}"' not in html


def test_an_agent_edits_a_ticket_and_adds_a_note(client, world):
    as_user(client, world.agent)
    url = change_url("ticket", world.ticket.pk)
    response = client.post(
        url,
        {
            "status": "resolved",
            "priority": "4",
            "assignee": str(world.agent.pk),
            "notes-TOTAL_FORMS": "2",
            "notes-INITIAL_FORMS": "1",
            "notes-MIN_NUM_FORMS": "0",
            "notes-MAX_NUM_FORMS": "1000",
            "notes-0-id": str(world.note.pk),
            "notes-0-ticket": str(world.ticket.pk),
            # Existing notes are read-only: a forged edit is ignored.
            "notes-0-text": "rewritten",
            "notes-1-ticket": str(world.ticket.pk),
            "notes-1-text": evil("new-note"),
            "_save": "Save",
        },
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    world.ticket.refresh_from_db()
    assert world.ticket.status == Ticket.Status.RESOLVED
    assert world.ticket.resolved_at is not None
    assert world.ticket.priority == Ticket.Priority.URGENT
    assert world.ticket.assignee == world.agent
    world.note.refresh_from_db()
    assert world.note.text == evil("note-text")
    new = InternalNote.objects.get(text=evil("new-note"))
    assert new.author == world.agent
    assert new.conversation == world.conversation
    assert new.ticket == world.ticket
    shown = client.get(change_url("conversation", world.conversation.pk)).content.decode()
    assert_escaped(shown, "new-note", "agent-first")
    # Reopening clears the resolution time.
    client.post(
        url,
        {
            "status": "open",
            "priority": "4",
            "assignee": "",
            "notes-TOTAL_FORMS": "0",
            "notes-INITIAL_FORMS": "0",
            "notes-MIN_NUM_FORMS": "0",
            "notes-MAX_NUM_FORMS": "1000",
        },
    )
    world.ticket.refresh_from_db()
    assert world.ticket.status == Ticket.Status.OPEN and world.ticket.resolved_at is None


def test_the_assignee_choices_are_staff_only(client, world, django_user_model):
    django_user_model.objects.create_user("visitor-account")
    as_user(client, world.agent)
    html = client.get(change_url("ticket", world.ticket.pk)).content.decode()
    assert "visitor-account" not in html
    assert f'value="{world.agent.pk}"' in html


def test_assign_to_me_and_resolve(client, world):
    as_user(client, world.agent)
    pks = [world.ticket.pk, world.formula_ticket.pk]
    assert post_action(client, "ticket", "assign_to_me", pks).status_code == 302
    assert set(Ticket.objects.filter(pk__in=pks).values_list("assignee", flat=True)) == {
        world.agent.pk
    }
    earlier = world.old_ticket.resolved_at
    assert post_action(client, "ticket", "resolve", [*pks, world.old_ticket.pk]).status_code == 302
    for ticket in Ticket.objects.filter(pk__in=pks):
        assert ticket.status == Ticket.Status.RESOLVED and ticket.resolved_at is not None
    world.old_ticket.refresh_from_db()
    assert world.old_ticket.resolved_at == earlier, "an already resolved ticket is untouched"


def _json_export(response) -> dict:
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert response["Content-Disposition"].startswith("attachment;")
    return json.loads(response.content)


def test_the_json_export_has_every_message_with_staff_fields(staff, world):
    # Two tickets of one conversation export it once.
    pks = [world.ticket.pk, world.old_ticket.pk, world.formula_ticket.pk]
    document = _json_export(post_action(staff, "ticket", "export_json", pks))
    by_id = {c["id"]: c for c in document["conversations"]}
    assert set(by_id) == {str(world.conversation.pk), str(world.formulas.pk)}
    exported = by_id[str(world.conversation.pk)]
    assert exported["site"]["name"] == evil("site")
    assert "prompt_canary" not in json.dumps(document)
    assert world.site.prompt_canary not in json.dumps(document)
    assert [m["seq"] for m in exported["messages"]] == [1, 2, 4, 5, 7, 8, 9]
    messages = {m["seq"]: m for m in exported["messages"]}
    withdrawn = messages[4]
    assert withdrawn["status"] == "withdrawn" and withdrawn["text"] == evil("WITHHELD-text")
    assert withdrawn["moderation"] == "flagged"
    assert withdrawn["moderation_categories"] == ["harassment", evil("category")]
    assert withdrawn["usage_estimated"] is True
    assert messages[2]["prompt_tokens"] == 120 and messages[2]["completion_tokens"] == 45
    assert messages[1]["handoff_reason"] == evil("msg-handoff")
    assert messages[8]["author"] == f"{evil('sam-first')} Smith"
    assert messages[5]["error_code"] == "taken_over"
    changes = exported["status_changes"]
    assert [(c["seq"], c["status"]) for c in changes] == [(3, "waiting"), (6, "agent")]
    assert changes[1]["reason"] == evil("taken-reason")


def _csv_rows(response) -> list[dict[str, str]]:
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    assert response["Content-Disposition"].startswith("attachment;")
    text = response.content.decode("utf-8-sig")
    return list(csv.DictReader(io.StringIO(text, newline="")))


def test_the_csv_export_has_a_row_per_message_and_no_live_formulas(staff, world):
    pks = [world.ticket.pk, world.formula_ticket.pk]
    rows = _csv_rows(post_action(staff, "ticket", "export_csv", pks))
    assert len(rows) == 7 + len(FORMULAS)
    first = [r for r in rows if r["conversation_id"] == str(world.conversation.pk)]
    assert [int(r["seq"]) for r in first] == [1, 2, 4, 5, 7, 8, 9]
    withdrawn = next(r for r in first if r["seq"] == "4")
    assert withdrawn["role"] == "assistant" and withdrawn["status"] == "withdrawn"
    assert withdrawn["text"] == evil("WITHHELD-text")
    assert withdrawn["moderation"] == "flagged"
    assert withdrawn["moderation_categories"] == f"harassment; {evil('category')}"
    answer = next(r for r in first if r["seq"] == "2")
    assert (answer["prompt_tokens"], answer["completion_tokens"]) == ("120", "45")
    assert next(r for r in first if r["seq"] == "1")["handoff_reason"] == evil("msg-handoff")
    texts = [r["text"] for r in rows if r["conversation_id"] == str(world.formulas.pk)]
    assert texts == list(FORMULAS.values())


def test_the_conversation_admin_exports_too(staff, world):
    pks = [world.conversation.pk]
    document = _json_export(post_action(staff, "conversation", "export_json", pks))
    assert [c["id"] for c in document["conversations"]] == [str(world.conversation.pk)]
    rows = _csv_rows(post_action(staff, "conversation", "export_csv", pks))
    assert len(rows) == 7


def test_only_superusers_see_sites(client, world):
    as_user(client, world.agent)
    assert client.get(CHANGELIST["site"]).status_code == 403
    assert client.get(change_url("site", world.site.pk)).status_code == 403
    assert client.get(reverse("admin:conversations_site_add")).status_code == 403
    index = client.get(reverse("admin:index")).content.decode()
    assert CHANGELIST["site"] not in index
    assert CHANGELIST["conversation"] in index and CHANGELIST["ticket"] in index

    as_user(client, world.superuser)
    assert client.get(CHANGELIST["site"]).status_code == 200
    page = client.get(change_url("site", world.site.pk))
    assert page.status_code == 200
    html = page.content.decode()
    assert_escaped(html)
    assert world.site.prompt_canary not in html
    assert "prompt_canary" not in html
    assert 'name="handoff_topics"' in html and 'name="moderation_mode"' in html


def test_ticket_actions_need_their_permissions(client, world, django_user_model):
    viewer = django_user_model.objects.create_user("viewer", is_staff=True)
    viewer.user_permissions.set(Permission.objects.filter(codename="view_ticket"))
    as_user(client, viewer)
    assert client.get(CHANGELIST["ticket"]).status_code == 200
    # Seeing tickets is not changing them, nor reading their conversations.
    for action in ("assign_to_me", "resolve", "export_json", "export_csv"):
        response = post_action(client, "ticket", action, [world.ticket.pk])
        assert "attachment" not in response.get("Content-Disposition", ""), action
    world.ticket.refresh_from_db()
    assert world.ticket.status == Ticket.Status.OPEN and world.ticket.assignee is None


def test_non_staff_get_no_admin(client, world, django_user_model):
    visitor = django_user_model.objects.create_user("someone")
    as_user(client, visitor)
    response = client.get(reverse("admin:index"))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))
    for url in CHANGELIST.values():
        assert client.get(url).status_code == 302


def test_the_ticket_filters_and_search_narrow_the_list(staff, world):
    Ticket.objects.filter(pk=world.formula_ticket.pk).update(assignee=world.sam)
    ticket, old, formulas = (
        change_url("ticket", t.pk) for t in (world.ticket, world.old_ticket, world.formula_ticket)
    )
    cases = [
        ({"status__exact": "resolved"}, old, ticket),
        ({"priority__exact": "3"}, ticket, formulas),
        ({"assignee__id__exact": world.sam.pk}, formulas, ticket),
        ({"q": "ticket-subject"}, ticket, formulas),
        ({"q": "ticket-reason"}, ticket, old),
    ]
    for params, shown, hidden in cases:
        html = staff.get(CHANGELIST["ticket"], params).content.decode()
        assert shown in html and hidden not in html, params


def test_site_permissions_given_to_a_group_still_do_not_open_sites(client, world):
    # Sites hold the prompt: being an administrator is what counts, not a permission.
    Group.objects.get(name=AGENTS_GROUP).permissions.add(
        *Permission.objects.filter(content_type__model="site")
    )
    as_user(client, world.agent)
    assert client.get(CHANGELIST["site"]).status_code == 403
    assert client.get(change_url("site", world.site.pk)).status_code == 403
    assert client.post(change_url("site", world.site.pk), {"name": "x"}).status_code == 403
    assert CHANGELIST["site"] not in client.get(reverse("admin:index")).content.decode()
