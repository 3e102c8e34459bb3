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
# The most a query lexeme adds to a chunk's score, in units of its idf: the chunk has it
# in the article's title and in a heading or tag.
MAX_FACTOR = 1 + max(TITLE_BOOST, 0.0) + max(HEADING_BOOST, 0.0)
# Ranking starts with the chunks of the query's rarest lexemes while these number at
# most this many (by document frequency): quick to rank, and they set a score the
# results must reach, which rules most other chunks out (see _best).
PROBE_CHUNKS = 1000
# Room for float rounding when comparing scores with bounds.
_ROUNDING = 1e-9

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


def _lexemes(site_id: int, terms: list[str]) -> list[tuple[str, float, int]]:
    """(lexeme, idf, chunks) for the query's terms, chunks being how many of the site's
    chunks have the lexeme. A lexeme no chunk has gets the highest idf: a question
    about something the articles never mention is mostly not covered by them."""
    with connection.cursor() as cursor:
        cursor.execute(
            "WITH l AS (SELECT DISTINCT unnest(tsvector_to_array("  # noqa: S608
            "  to_tsvector('english', t))) AS lexeme FROM unnest(%s::text[]) AS t),"
            " n AS (SELECT coalesce(max(greatest(chunks, 1)), 1) AS total"
            f"  FROM {KnowledgeLexeme._meta.db_table} WHERE site_id = %s AND lexeme = '')"
            " SELECT l.lexeme,"
            "  ln(1 + (n.total - coalesce(k.chunks, 0) + 0.5) / (coalesce(k.chunks, 0) + 0.5)),"
            "  coalesce(k.chunks, 0)"
            f" FROM l CROSS JOIN n LEFT JOIN {KnowledgeLexeme._meta.db_table} k"
            "  ON k.site_id = %s AND k.lexeme = l.lexeme",
            [terms, site_id, site_id],
        )
        return [(lexeme, float(idf), chunks) for lexeme, idf, chunks in cursor.fetchall()]


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
    # Synonyms widen the search but must not make a question look better covered:
    # the coverage is measured against the visitor's own words.
    own = _lexemes(site_id, words)
    total = sum(idf for _, idf, _ in own) * (1 + TITLE_BOOST) or 1.0
    found = [entry for entry in _lexemes(site_id, expand(words)) if entry[2] > 0]
    if not found:
        return []
    return _best(site_id, found, total, k, min_score)


def _best(
    site_id: int, found: list[tuple[str, float, int]], total: float, k: int, min_score: float
) -> list[Hit]:
    """The k best of the chunks having any of the lexemes, ranking as few as it can.

    A common word ("lamp") is in a large share of a big site's chunks, and ranking
    each costs time; most of them cannot be among the k best. A lexeme adds at most
    idf * MAX_FACTOR to a chunk's score, so a chunk with none of the rarest lexemes
    scores at most the sum of the others' bounds: when that is below a score the
    results must reach, such chunks need not be ranked (MaxScore). The chunks of the
    rarest lexemes, ranked first, give that score; the results are exactly those of
    ranking every chunk with any of the lexemes.
    """
    lexemes = [(lexeme, idf) for lexeme, idf, _ in found]
    rarest = sorted(found, key=lambda entry: -entry[1])
    probe, chunks = [], 0
    for lexeme, _, count in rarest:
        if probe and chunks + count > PROBE_CHUNKS:
            break
        probe.append(lexeme)
        chunks += count
    hits, scores = _rank(site_id, lexemes, probe, total, k, min_score)
    if len(probe) == len(rarest):
        return hits
    # Every result scores at least this: the k-th score found so far, or the threshold.
    least = max(scores[-1] if len(hits) == k else 0.0, min_score * total) * (1 - _ROUNDING)
    # The rarest lexemes a chunk needs one of to reach `least`.
    needed, rest = len(rarest), 0.0
    while needed and rest + max(rarest[needed - 1][1], 0.0) * MAX_FACTOR < least:
        needed -= 1
        rest += max(rarest[needed][1], 0.0) * MAX_FACTOR
    if needed <= len(probe):
        return hits  # every chunk that could be a result was ranked already
    matching = [lexeme for lexeme, _, _ in rarest[:needed]]
    return _rank(site_id, lexemes, matching, total, k, min_score)[0]


def _rank(
    site_id: int,
    lexemes: list[tuple[str, float]],
    matching: list[str],
    total: float,
    k: int,
    min_score: float,
) -> tuple[list[Hit], list[float]]:
    """The k best chunks having any of the `matching` lexemes, scored on all `lexemes`,
    and their scores before division by `total`."""
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
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT top.id, top.article_id, a.title, a.url, top.heading, top.text,"  # noqa: S608
            " top.score / %s, top.score"
            # OFFSET 0 keeps the inner query as it is, so each chunk is scored once, not
            # again in the filter and in the sort.
            " FROM (SELECT * FROM (SELECT c.id, c.article_id, c.heading, c.text,"
            f"  {' + '.join([term] * len(lexemes))} AS score"
            f"  FROM {Chunk._meta.db_table} c WHERE c.site_id = %s AND c.search_vector"
            "  @@ (SELECT string_agg(quote_literal(m), ' | ')::tsquery FROM unnest(%s::text[]) m)"
            "  OFFSET 0) AS scored WHERE scored.score / %s >= %s"
            "  ORDER BY scored.score DESC, scored.id LIMIT %s) AS top"
            # Articles are joined to the k results, not to every chunk ranked.
            f" JOIN {Article._meta.db_table} a ON a.id = top.article_id"
            " ORDER BY top.score DESC, top.id",
            [total, *scores, site_id, matching, total, min_score, k],
        )
        rows = cursor.fetchall()
    return [Hit(*row[:7]) for row in rows], [row[7] for row in rows]
