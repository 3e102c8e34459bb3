"""Which of a site's chunks answer a question: full-text search in PostgreSQL.

The question's words are corrected against the site's own vocabulary (trigram
similarity, for typos like "pasword"), widened with a few support synonyms, and
OR-ed into `websearch_to_tsquery`; chunks are ranked with `ts_rank` (title weighs
more than headings and tags, which weigh more than text). Callers get `Hit`s and
never SQL, so an embeddings ranker can later be mixed in here (hybrid ranking)
without changing them. On a large site most chunks that share a common word with
the question cannot be among the best, and are not ranked (see `_best`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from django.conf import settings
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


def _lexemes(site_id: int, words: list[str]) -> list[tuple[str, float, int, bool]]:
    """(lexeme, idf, chunks, own) for the words and their synonyms: chunks is how many of
    the site's chunks have the lexeme, own whether it is one of the visitor's own words
    (not only a synonym's). A lexeme no chunk has gets the highest idf: a question about
    something the articles never mention is mostly not covered by them. One statement
    for both, as this is on every question's path."""
    with connection.cursor() as cursor:
        cursor.execute(
            "WITH t AS (SELECT t, n <= %s AS own"  # noqa: S608
            "  FROM unnest(%s::text[]) WITH ORDINALITY AS x(t, n)),"
            " l AS (SELECT lexeme, bool_or(own) AS own FROM t,"
            "  unnest(tsvector_to_array(to_tsvector('english', t.t))) AS lexeme GROUP BY lexeme),"
            " n AS (SELECT coalesce(max(greatest(chunks, 1)), 1) AS total"
            f"  FROM {KnowledgeLexeme._meta.db_table} WHERE site_id = %s AND lexeme = '')"
            " SELECT l.lexeme,"
            "  ln(1 + (n.total - coalesce(k.chunks, 0) + 0.5) / (coalesce(k.chunks, 0) + 0.5)),"
            "  coalesce(k.chunks, 0), l.own"
            f" FROM l CROSS JOIN n LEFT JOIN {KnowledgeLexeme._meta.db_table} k"
            "  ON k.site_id = %s AND k.lexeme = l.lexeme ORDER BY l.lexeme",
            [len(words), expand(words), site_id, site_id],
        )
        return [(lexeme, float(idf), chunks, own) for lexeme, idf, chunks, own in cursor]


def retrieve(
    *, site_id: int, query: str, k: int = TOP_K, min_score: float = MIN_SCORE
) -> list[Hit]:
    """The site's best chunks for the query, best first, each scoring min_score or more.

    A chunk's score is the share of the query's weight it covers: each query lexeme
    weighs its inverse document frequency (BM25's), counted once if the chunk has
    it, more if the article's title (weight A) or a heading or tag (B) has it.
    """
    if k <= 0:
        return []
    words = corrected(site_id, content_words(query))
    if not words:
        return []
    lexemes = _lexemes(site_id, list(dict.fromkeys(words)))
    # Synonyms widen the search but must not make a question look better covered:
    # the coverage is measured against the visitor's own words.
    total = sum(idf for _, idf, _, own in lexemes if own) * (1 + TITLE_BOOST) or 1.0
    found = [(lexeme, idf, chunks) for lexeme, idf, chunks, _ in lexemes if chunks > 0]
    if not found:
        return []
    return _best(site_id, found, total, k, min_score)


def _best(
    site_id: int, found: list[tuple[str, float, int]], total: float, k: int, min_score: float
) -> list[Hit]:
    """The k best of the chunks having any of the lexemes, ranking at most a budget
    of chunks (settings.KNOWLEDGE_RANK_BUDGET).

    A common word ("lamp") is in a large share of a big site's chunks, and ranking
    each costs time. While the question's lexemes are in at most `budget` chunks in
    all, every chunk having one is ranked: the exact k best. Beyond that, as
    Elasticsearch's "common terms" query, only the rarest lexemes (up to the budget)
    bring chunks in; the common ones still count in every chunk's score. A chunk that
    has only common words of a long question rarely covers enough of it to be among
    the best. A question whose every lexeme is common ranks chunks having its two
    rarest, at most `budget` of them. benchmarks.retrieval prints how often the
    results equal those of ranking every chunk.
    """
    budget = settings.KNOWLEDGE_RANK_BUDGET
    lexemes = [(lexeme, idf) for lexeme, idf, _ in found]
    rarest = sorted(found, key=lambda entry: (-entry[1], entry[0]))
    probe, chunks = [], 0
    for lexeme, _, count in rarest:
        if chunks + count > budget:
            break
        probe.append(lexeme)
        chunks += count
    if not probe:
        # Even the rarest lexeme is in more chunks than the budget.
        together = [lexeme for lexeme, _, _ in rarest[:2]]
        return _rank(site_id, lexemes, together, total, k, min_score, budget, every=True)
    return _rank(site_id, lexemes, probe, total, k, min_score, budget)


def _rank(
    site_id: int,
    lexemes: list[tuple[str, float]],
    matching: list[str],
    total: float,
    k: int,
    min_score: float,
    budget: int,
    *,
    every: bool = False,
) -> list[Hit]:
    """The k best chunks having any (with `every`, all) of the `matching` lexemes,
    at most `budget` of them ranked, scored on all `lexemes`."""
    # A chunk's score, as one expression: per lexeme, its idf times 1, plus TITLE_BOOST
    # if the title has it and HEADING_BOOST if a heading or tag has it, or 0 if the
    # chunk lacks it. Added up in the order of `lexemes`, this is the same float as
    # sum() over one row per lexeme (adding 0.0 changes no float), and it costs no
    # subquery per chunk. The constant tsqueries are parsed once, when planning.
    term = (
        "CASE WHEN c.search_vector @@ quote_literal(%s)::tsquery THEN %s::float8 * (1"
        " + %s * (c.search_vector @@ (quote_literal(%s) || ':A')::tsquery)::int"
        " + %s * (c.search_vector @@ (quote_literal(%s) || ':B')::tsquery)::int) ELSE 0 END"
    )
    scores: list[object] = []
    for lexeme, idf in lexemes:
        scores += [lexeme, idf, TITLE_BOOST, lexeme, HEADING_BOOST, lexeme]
    joiner = " & " if every else " | "
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT top.id, top.article_id, a.title, a.url, top.heading, top.text,"  # noqa: S608
            " top.score / %s"
            # OFFSET 0 keeps the inner query as it is, so each chunk is scored once, not
            # again in the filter and in the sort.
            " FROM (SELECT * FROM (SELECT c.id, c.article_id, c.heading, c.text,"
            f"  {' + '.join([term] * len(lexemes))} AS score"
            f"  FROM {Chunk._meta.db_table} c WHERE c.search_vector @@ (SELECT"
            f"  string_agg(quote_literal(m), '{joiner}')::tsquery FROM unnest(%s::text[]) m)"
            # The site is checked on each matching chunk, not with the site_id index:
            # AND-ing the bitmaps costs a read of every chunk id of the site.
            "  AND c.site_id + 0 = %s"
            "  LIMIT %s) AS scored WHERE scored.score / %s >= %s"
            "  ORDER BY scored.score DESC, scored.id LIMIT %s) AS top"
            # Articles are joined to the k results, not to every chunk ranked.
            f" JOIN {Article._meta.db_table} a ON a.id = top.article_id"
            " ORDER BY top.score DESC, top.id",
            [total, *scores, matching, site_id, budget, total, min_score, k],
        )
        return [Hit(*row) for row in cursor.fetchall()]
