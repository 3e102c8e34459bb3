"""Which of a site's chunks answer a question: full-text search in PostgreSQL.

The question's words are corrected against the site's own vocabulary (trigram
similarity, for typos like "pasword"), widened with a few support synonyms, and
OR-ed into `websearch_to_tsquery`; chunks are ranked with `ts_rank` (title weighs
more than headings and tags, which weigh more than text). Callers get `Hit`s and
never SQL, so an embeddings ranker can later be mixed in here (hybrid ranking)
without changing them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from django.db import connection

from conversations.knowledge.synonyms import expand, rewrite_phrases
from conversations.models import Article, Chunk, KnowledgeLexeme, KnowledgeTerm

TOP_K = 4
# Below this rank nothing counts as knowledge (chosen on tests/kb_questions.py; see
# docs/knowledge.md for the precision/recall at this threshold).
MIN_SCORE = 0.15
MAX_QUERY_WORDS = 40
# How much more a query word counts in an article's title, or in a heading or tag.
TITLE_BOOST = 1.0
HEADING_BOOST = 0.5
# Words this similar (pg_trgm) to a term of the site's articles are read as it.
TYPO_SIMILARITY = 0.45

_WORD = re.compile(r"[^\W_]+")
# English words that carry no meaning for search (websearch_to_tsquery drops its own
# stop words too; these are the conversational ones it keeps).
_FILLER = frozenset(
    "hi hello hey thanks thank please pls help want need know tell get got can could "
    "would should will does do did how what when where why which who whom is are was "
    "were be been am the a an and or but if so to of in on at by for with from my your "
    "our me i you we it this that there here just also still really any some".split()
)


@dataclass(frozen=True)
class Hit:
    chunk_id: int
    article_id: int
    title: str
    url: str
    heading: str
    text: str
    score: float


def content_words(text: str) -> list[str]:
    words = [w.lower() for w in _WORD.findall(rewrite_phrases(text))]
    return [w for w in words if w not in _FILLER and len(w) > 1][:MAX_QUERY_WORDS]


def query_for(question: str, recent: list[str]) -> str:
    """The search text: the visitor's last message, plus the one before it when the
    last is short (a follow-up like "and in the UK?" needs its subject)."""
    if len(content_words(question)) >= 3 or not recent:
        return question
    return f"{question} {recent[0]}"


def has_knowledge(site_id: int) -> bool:
    return Article.objects.filter(site_id=site_id, published=True).exists()


def corrected(site_id: int, words: list[str]) -> list[str]:
    """The words, each misspelled one replaced by the site's nearest term."""
    if not words:
        return []
    unique = sorted(set(words))
    known = set(
        KnowledgeTerm.objects.filter(site_id=site_id, term__in=unique).values_list(
            "term", flat=True
        )
    )
    unknown = [w for w in unique if w not in known and len(w) >= 4 and w.isalpha()]
    fixes: dict[str, str] = {}
    if unknown:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT DISTINCT ON (w) w, t.term FROM unnest(%s::text[]) AS w"  # noqa: S608
                f" JOIN {KnowledgeTerm._meta.db_table} t"
                " ON t.site_id = %s AND similarity(t.term, w) >= %s AND t.term %% w"
                " ORDER BY w, similarity(t.term, w) DESC",
                [unknown, site_id, TYPO_SIMILARITY],
            )
            fixes = dict(cursor.fetchall())
    return [fixes.get(w, w) for w in words]


def _lexemes(site_id: int, terms: list[str]) -> list[tuple[str, float, bool]]:
    """(lexeme, idf, occurs) for the query's terms. A lexeme no chunk has gets the
    highest idf: a question about something the articles never mention is mostly
    not covered by them."""
    with connection.cursor() as cursor:
        cursor.execute(
            "WITH l AS (SELECT DISTINCT unnest(tsvector_to_array("  # noqa: S608
            "  to_tsvector('english', t))) AS lexeme FROM unnest(%s::text[]) AS t),"
            " n AS (SELECT coalesce(max(greatest(chunks, 1)), 1) AS total"
            f"  FROM {KnowledgeLexeme._meta.db_table} WHERE site_id = %s AND lexeme = '')"
            " SELECT l.lexeme,"
            "  ln(1 + (n.total - coalesce(k.chunks, 0) + 0.5) / (coalesce(k.chunks, 0) + 0.5)),"
            "  coalesce(k.chunks, 0) > 0"
            f" FROM l CROSS JOIN n LEFT JOIN {KnowledgeLexeme._meta.db_table} k"
            "  ON k.site_id = %s AND k.lexeme = l.lexeme",
            [terms, site_id, site_id],
        )
        return [(lexeme, float(idf), occurs) for lexeme, idf, occurs in cursor.fetchall()]


def retrieve(
    *, site_id: int, query: str, k: int = TOP_K, min_score: float = MIN_SCORE
) -> list[Hit]:
    """The site's best chunks for the query, best first, each scoring min_score or more.

    A chunk's score is the share of the query's weight it covers: each query lexeme
    weighs its inverse document frequency (BM25's), counted once if the chunk has
    it, more if the article's title (weight A) or a heading or tag (B) has it.
    """
    words = corrected(site_id, content_words(query))
    if not words:
        return []
    # Synonyms widen the search but must not make a question look better covered:
    # the coverage is measured against the visitor's own words.
    own = _lexemes(site_id, words)
    total = sum(idf for _, idf, _ in own) * (1 + TITLE_BOOST) or 1.0
    lexemes = [(lexeme, idf) for lexeme, idf, occurs in _lexemes(site_id, expand(words)) if occurs]
    if not lexemes:
        return []
    with connection.cursor() as cursor:
        cursor.execute(
            "WITH t AS (SELECT l, idf, quote_literal(l)::tsquery AS q,"  # noqa: S608
            "  (quote_literal(l) || ':A')::tsquery AS qa,"
            "  (quote_literal(l) || ':B')::tsquery AS qb"
            "  FROM unnest(%s::text[], %s::float8[]) AS x(l, idf)),"
            " q AS (SELECT string_agg(quote_literal(l), ' | ')::tsquery AS any FROM t)"
            " SELECT c.id, c.article_id, a.title, a.url, c.heading, c.text, s.score / %s"
            f" FROM {Chunk._meta.db_table} c"
            f" JOIN {Article._meta.db_table} a ON a.id = c.article_id, q,"
            " LATERAL (SELECT sum(t.idf * (1 + %s * (c.search_vector @@ t.qa)::int"
            "   + %s * (c.search_vector @@ t.qb)::int)) AS score"
            "  FROM t WHERE c.search_vector @@ t.q) AS s"
            " WHERE c.site_id = %s AND c.search_vector @@ q.any AND s.score / %s >= %s"
            " ORDER BY s.score DESC, c.id LIMIT %s",
            [
                [lexeme for lexeme, _ in lexemes],
                [idf for _, idf in lexemes],
                total,
                TITLE_BOOST,
                HEADING_BOOST,
                site_id,
                total,
                min_score,
                k,
            ],
        )
        return [Hit(*row) for row in cursor.fetchall()]
