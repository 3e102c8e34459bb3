"""Grounded answers: retrieval quality on the labelled set, isolation between sites,
and the end-to-end path from question to cited answer."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from django.core.management import call_command

import conversations
from conversations import handoff
from conversations.knowledge import retrieval
from conversations.knowledge.evaluation import evaluate
from conversations.knowledge.importer import import_path
from conversations.knowledge.store import article_upsert
from conversations.models import Conversation, Message
from conversations.replies import NO_KNOWLEDGE_REPLY
from tests.kb_questions import QUESTIONS
from tests.moderation_helpers import chat_requests, make_site
from tests.scripted_llm import Script
from tests.visitor import Visitor, run

DEMO_KB = Path(conversations.__file__).parent / "demo_kb"


def with_demo_kb(site):
    report = import_path(site, DEMO_KB)
    assert len(report.added) == 30 and not report.rejected, report.summary()
    return {a.url.rstrip("/").rsplit("/", 1)[-1]: a.pk for a in site.articles.all()}


def test_retrieval_finds_the_right_article_for_labelled_questions(transactional_db, capsys):
    site = make_site(name="Lumen")
    slugs = with_demo_kb(site)
    result = evaluate(QUESTIONS, lambda q: retrieval.retrieve(site_id=site.pk, query=q), slugs)
    with capsys.disabled():
        print("\n" + result.table())
    assert result.answerable >= 90 and result.unanswerable >= 30
    assert result.hit_at_3 >= 0.9
    assert result.hit_at_1 >= 0.7
    assert result.no_answer_precision >= 0.8


def test_the_evaluation_command_prints_the_figures(transactional_db):
    out = io.StringIO()
    call_command("evaluate_retrieval", stdout=out)
    text = out.getvalue()
    for label in ("hit@1", "hit@3", "no-answer precision", "no-answer recall"):
        assert label in text


def test_a_site_never_retrieves_another_sites_articles(transactional_db):
    mine = make_site(name="Mine")
    theirs = make_site(name="Theirs")
    article_upsert(
        site=theirs, source="a", title="Reset your password", body="Reset your password here."
    )
    assert retrieval.retrieve(site_id=mine.pk, query="how do I reset my password") == []
    assert not retrieval.has_knowledge(mine.pk)
    article_upsert(site=mine, source="b", title="Shipping times", body="We ship in 2 days.")
    hits = retrieval.retrieve(site_id=mine.pk, query="reset password shipping times")
    assert hits and {hit.article_id for hit in hits} <= set(
        mine.articles.values_list("pk", flat=True)
    )


def test_typos_are_corrected_against_the_sites_own_words(transactional_db):
    site = make_site(name="Typos")
    article_upsert(
        site=site,
        source="pw",
        title="Reset your password",
        body="Use Forgot password on the sign-in screen; the link is valid for 60 minutes.",
    )
    assert retrieval.corrected(site.pk, ["pasword", "resett"]) == ["password", "reset"]
    assert retrieval.retrieve(site_id=site.pk, query="forgot my pasword")


def test_an_unpublished_article_is_never_retrieved(transactional_db):
    site = make_site(name="Drafts")
    article, _ = article_upsert(
        site=site, source="d", title="Secret launch plan", body="The launch plan.", published=False
    )
    assert retrieval.retrieve(site_id=site.pk, query="launch plan") == []
    assert article.chunks.count() == 0


def _lamp_site():
    """A site where "lamp" is in every chunk and "zebra" in one."""
    site = make_site(name="Many lamps")
    for n in range(12):
        article_upsert(
            site=site,
            source=f"a{n}",
            title=f"Lamp topic {n}",
            body=f"The lamp needs care number {n}. Dust the lamp weekly.",
        )
    article_upsert(
        site=site, source="z", title="Striped shades", body="The zebra shade fits any lamp."
    )
    return site


def _ids(site, query: str) -> list[int]:
    return [hit.chunk_id for hit in retrieval.retrieve(site_id=site.pk, query=query)]


def test_within_the_ranking_budget_the_results_are_exact(transactional_db, settings):
    site = _lamp_site()
    settings.KNOWLEDGE_RANK_BUDGET = 10**9
    unlimited = {q: _ids(site, q) for q in ("lamp zebra shade", "dust the lamp", "lamp")}
    assert all(unlimited.values())
    # Counted per word, the words of "dust the lamp" are in 12 + 13 chunks, the most of
    # these questions: a budget of 25 still ranks every chunk having any of them.
    settings.KNOWLEDGE_RANK_BUDGET = 25
    assert {q: _ids(site, q) for q in unlimited} == unlimited


def test_beyond_the_budget_rare_words_bring_chunks_in_and_common_ones_still_count(
    transactional_db, settings
):
    site = _lamp_site()
    settings.KNOWLEDGE_RANK_BUDGET = 3
    hits = retrieval.retrieve(site_id=site.pk, query="zebra lamp")
    # Only the chunk with "zebra" was ranked; "lamp" still counts in its score.
    assert [h.title for h in hits] == ["Striped shades"]
    settings.KNOWLEDGE_RANK_BUDGET = 10**9
    assert retrieval.retrieve(site_id=site.pk, query="zebra lamp")[0] == hits[0]
    # Every word common: at most the budget of chunks having the rarest two are ranked.
    settings.KNOWLEDGE_RANK_BUDGET = 3
    common = retrieval.retrieve(site_id=site.pk, query="dust the lamp")
    assert 1 <= len(common) <= 3
    assert all("Dust the lamp" in h.text for h in common)


def visitor_for(stack, site) -> Visitor:
    return Visitor(stack.http_url, stack.ws_url, site.public_key)


@pytest.fixture
def lumen(transactional_db):
    site = make_site(name="Lumen", system_prompt="You are Lumen Home's support assistant.")
    with_demo_kb(site)
    return site


def test_the_model_gets_the_chunks_and_the_answer_cites_its_sources(stack, llm, lumen):
    llm.enqueue(Script(tokens=["Tap ", "Forgot password? ", "on the sign-in screen."]))
    visitor = visitor_for(stack, lumen)
    conversation = visitor.start()

    async def scenario():
        async with visitor.socket(conversation) as socket:
            await socket.say("I forgot my pasword, how do I reset it?")
            return await socket.reply()

    events, done = run(scenario())
    reset = lumen.articles.get(url__endswith="/reset-password")
    system = chat_requests(llm)[-1]["json"]["messages"][0]["content"]
    assert f'<article id="{reset.pk}" title="{reset.title}"' in system
    assert "Answer only from the help-centre articles below" in system
    assert any(chunk.text[:80] in system for chunk in reset.chunks.all())

    assert done["sources"] and done["sources"][0] == {
        "id": reset.pk,
        "title": reset.title,
        "url": reset.url,
    }
    start = next(
        e for e in events if e["type"] == "message" and e["message"]["role"] == "assistant"
    )
    assert start["message"]["sources"] == done["sources"], "known before the first token"
    stored = Message.objects.get(pk=done["id"])
    assert stored.sources == done["sources"]
    listed = visitor.messages(conversation["conversation"]["id"]).json()["messages"]
    assert next(m for m in listed if m["id"] == done["id"])["sources"] == done["sources"]


def test_quoting_an_article_is_not_a_prompt_leak(stack, llm, lumen):
    reset = lumen.articles.get(url__endswith="/reset-password")
    quote = " ".join(reset.chunks.order_by("ordinal").first().text.split()[:30])
    llm.enqueue(Script(tokens=[quote + " "]))
    visitor = visitor_for(stack, lumen)
    conversation = visitor.start()

    async def scenario():
        async with visitor.socket(conversation) as socket:
            await socket.say("how do I reset my password?")
            return await socket.reply()

    _, done = run(scenario())
    assert done["status"] == "complete"


def test_with_nothing_to_go_on_the_bot_says_so_and_brings_in_a_person(stack, llm, lumen):
    visitor = visitor_for(stack, lumen)
    conversation = visitor.start()

    async def scenario():
        async with visitor.socket(conversation) as socket:
            await socket.say("Are you hiring software engineers in Lisbon?")
            events, done = await socket.reply()
            return events + await socket.until(lambda e: e["type"] == "status"), done

    events, done = run(scenario())
    assert chat_requests(llm) == [], "no guessing"
    assert done["text"] == NO_KNOWLEDGE_REPLY and done["sources"] == []
    reply = Message.objects.get(pk=done["id"])
    assert reply.handoff_requested and reply.handoff_reason == handoff.NO_KNOWLEDGE
    conv = Conversation.objects.get(pk=conversation["conversation"]["id"])
    assert conv.status == "waiting" and conv.handoff_reason == handoff.NO_KNOWLEDGE


def test_small_talk_needs_no_article(stack, llm, lumen):
    llm.enqueue(Script(tokens=["Hello! How can I help?"]))
    visitor = visitor_for(stack, lumen)
    conversation = visitor.start()

    async def scenario():
        async with visitor.socket(conversation) as socket:
            await socket.say("hi there!")
            return await socket.reply()

    _, done = run(scenario())
    assert done["text"] == "Hello! How can I help?" and done["sources"] == []
    assert Conversation.objects.get(pk=conversation["conversation"]["id"]).status == "bot"
