"""Writes for the knowledge base: an article saved is re-chunked and re-indexed."""

from __future__ import annotations

import re

from django.db import connection, transaction

from conversations.knowledge.chunking import chunk
from conversations.models import Article, Chunk, KnowledgeLexeme, KnowledgeTerm, Site

MAX_TITLE = 300
MAX_URL = 500
MAX_BODY_CHARS = 200_000
MAX_TAGS = 30

# A term must look like a word a visitor could misspell: letters, 3 to 40 long.
_TERM = re.compile(r"[^\W\d_]{3,40}")


def article_save(article: Article) -> Article:
    """Save an article and rebuild its chunks, search vectors and terms, atomically."""
    with transaction.atomic():
        article.save()
        _reindex(article)
    return article


def article_upsert(
    *,
    site: Site,
    source: str,
    title: str,
    body: str,
    url: str = "",
    tags: list[str] | None = None,
    published: bool = True,
) -> tuple[Article, str]:
    """Add or update the site's article from `source`: ("added" | "updated" | "unchanged")."""
    tags = [t for t in (tags or []) if t][:MAX_TAGS]
    with transaction.atomic():
        article = (
            Article.objects.select_for_update().filter(site=site, source=source).first()
            if source
            else None
        )
        if article is None:
            article = Article(site=site, source=source)
            outcome = "added"
        elif (article.title, article.body, article.url, article.tags, article.published) == (
            title,
            body,
            url,
            tags,
            published,
        ):
            return article, "unchanged"
        else:
            outcome = "updated"
        article.title, article.body, article.url = title, body, url
        article.tags, article.published = tags, published
        article_save(article)
    return article, outcome


def article_delete(article: Article) -> None:
    with transaction.atomic():
        _count_lexemes(article, sign=-1)
        article.delete()


def _reindex(article: Article) -> None:
    _count_lexemes(article, sign=-1)
    Chunk.objects.filter(article=article).delete()
    if not article.published:
        return  # an unpublished article has no chunks, so retrieval never sees it
    Chunk.objects.bulk_create(
        Chunk(
            article=article,
            site_id=article.site_id,
            ordinal=i,
            heading=p.heading[:300],
            text=p.text,
        )
        for i, p in enumerate(chunk(article.body))
    )
    tags = " ".join(str(tag) for tag in article.tags)
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {Chunk._meta.db_table} SET search_vector ="  # noqa: S608
            " setweight(to_tsvector('english', %s), 'A')"
            " || setweight(to_tsvector('english', %s || ' ' || heading), 'B')"
            " || setweight(to_tsvector('english', text), 'C')"
            " WHERE article_id = %s",
            [article.title, tags, article.pk],
        )
    _count_lexemes(article, sign=1)
    terms = sorted(
        {word.lower() for word in _TERM.findall(f"{article.title} {tags} {article.body}")}
    )
    KnowledgeTerm.objects.bulk_create(
        [KnowledgeTerm(site_id=article.site_id, term=term) for term in terms],
        ignore_conflicts=True,
    )


def _count_lexemes(article: Article, *, sign: int) -> None:
    """Add (sign 1) or remove (-1) this article's chunks from the site's document
    frequencies: the lexemes of each chunk, and the chunk count under ""."""
    table = KnowledgeLexeme._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (site_id, lexeme, chunks)"  # noqa: S608
            " SELECT %s, word, %s * ndoc FROM ts_stat("
            f"  'SELECT search_vector FROM {Chunk._meta.db_table} WHERE article_id = '"
            "  || %s::int)"
            # A long URL is one lexeme; no visitor types it, so it needs no count.
            " WHERE length(word) <= 100"
            " UNION ALL SELECT %s, '', %s * count(*) FROM "
            f" {Chunk._meta.db_table} WHERE article_id = %s"
            " ON CONFLICT (site_id, lexeme) DO UPDATE SET chunks ="
            f" {table}.chunks + EXCLUDED.chunks",
            [article.site_id, sign, article.pk, article.site_id, sign, article.pk],
        )
