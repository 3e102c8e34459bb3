"""Latency of knowledge retrieval (`retrieve()`) at large knowledge bases, in one run.

    python -m benchmarks.retrieval [--chunks 10000,100000] [--queries 500] [--seed 1]

Creates a PostgreSQL database of its own on the server at DATABASE_URL (migrated,
dropped at the end). For each size it builds one site whose knowledge base has that
many chunks: the 30 demo articles (conversations/demo_kb, imported through the
product's importer) plus generated ones, and a second site of about the same size
in the same tables, so the site filter is exercised. Generated articles are support
prose sampled from a ranked vocabulary (the demo help centre's words by frequency,
then a synthetic tail) with Zipf-like weights, plus product names, so common words
are common and rare words rare. They are bulk-inserted and indexed set-wise with the
same SQL as `knowledge/store.py`; a check first proves that this gives exactly the
rows `article_upsert` gives, and re-saving a sample through `article_save` must
change nothing.

It then times `retrieve()` (the product function, through Django's connection,
wall time per call including Python) on the 137 labelled questions of
tests/kb_questions.py plus generated ones, after a warm-up pass, and prints p50,
p90, p99 and max per size, the median number of candidate chunks (chunks of the
site matching any query lexeme), the time per SQL statement, and PASS/FAIL against
the target: p99 <= 20 ms at 100,000 chunks. When p99 misses it, the slowest
queries' statements are run again under EXPLAIN (ANALYZE, BUFFERS).

Retrieval ranks at most KNOWLEDGE_RANK_BUDGET chunks per question (exact below
it), so each size also reports what the budget costs: how often the hits equal
those of ranking every chunk, and hit@1/hit@3 of the labelled questions both ways.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import random
import re
import statistics
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks.run import background_load, bench_database, percentile

if TYPE_CHECKING:
    from conversations.knowledge.evaluation import Evaluation

ROOT = Path(__file__).resolve().parent.parent
DEMO_KB = ROOT / "conversations" / "demo_kb"

# The target (from the issue).
TARGET_CHUNKS = 100_000
TARGET_P99_MS = 20.0

SYNTHETIC_WORDS = 2_700  # the vocabulary's tail, after the demo help centre's ~1,300 words
ZIPF_SHIFT = 2.7  # Zipf-Mandelbrot: weight 1 / (rank + shift), a flatter head than 1 / rank
TOPIC_WORDS = 20  # content words an article is about
TOPIC_SHARE = 0.6  # chance that a content word of an article is one of its topic's
ARTICLES_PER_PRODUCT = 12  # a larger help centre documents more products
VERIFY_ARTICLES = 120  # generated articles in the bulk-load equivalence check
RESAVE_SAMPLE = 5
EXPLAIN_QUERIES = 3
LOAD_BATCH = 500  # generated articles per bulk-load transaction
QUESTION_PRODUCTS = 40  # generated questions name one of the first 40 products


# --- Generated help centre -----------------------------------------------------------

# Syllables for the synthetic tail words and product names: English-like spelling, so
# their trigrams overlap the way real words' do (typo correction searches by trigram).
_ONSETS = (
    "b br c ch cl cr d dr f fl fr g gl gr h j k l m n p pl pr r s sc sh sl sp st t th tr v w"
).split()
_VOWELS = "a a e e i i o o u ai ea ee oa ou".split()
_CODAS = ["", "", "", "n", "r", "l", "s", "t", "nd", "st", "rk", "ng", "m", "ck", "x"]
_SUFFIXES = ["", "", "", "", "", "er", "ing", "ed", "ion", "able", "ment", "ly"]

# Words that do not make a title, heading, tag or question word (the rest are
# sampled as "content" words).
_STOP = frozenset(
    "a about after again all also am an and any are as at be been before both but by can "
    "could did do does don each few for from further get got had has have he her here him "
    "his how i if in into is it its just me more most my no nor not now of off on once only "
    "or other our out over own same she should so some such than that the their them then "
    "there these they this those through to too under until up very was we were what when "
    "where which while who whom why will with would you your s t".split()
)
_WORD = re.compile(r"[^\W\d_]+")

_TITLE_FORMS = [
    "How to {}", "Why {}", "What to do when {}", "{}", "Troubleshooting {}", "About {}",
    "Setting up {}", "{} explained", "Can I {}?", "Fixing {}",
]  # fmt: skip
_QUESTION_FORMS = [
    "how do i {}", "{}", "can i {}", "why is my {}", "my {} is not working", "help with {}",
    "where do i find {}", "what happens if {}", "is it possible to {}", "{}?",
]  # fmt: skip


@dataclass(frozen=True)
class GeneratedArticle:
    source: str
    title: str
    body: str
    url: str
    tags: list[str]


def _synthetic_word(rng: random.Random) -> str:
    syllables = rng.choice((1, 2, 2, 2, 3))
    word = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(syllables))
    return word + rng.choice(_CODAS) + rng.choice(_SUFFIXES)


def _demo_texts() -> list[str]:
    """The demo articles' text as the importer stores it (title, tags, body)."""
    from conversations.knowledge.importer import Parsed, parse_file

    texts = []
    for path in sorted(DEMO_KB.glob("*.md")):
        parsed = parse_file(path.name, path.read_bytes())
        assert isinstance(parsed, Parsed), parsed
        texts.append(" ".join([parsed.title, *parsed.tags, parsed.body]))
    return texts


class Vocabulary:
    """The demo help centre's words ranked by frequency, then a synthetic tail, each
    weighing 1 / (rank + ZIPF_SHIFT); the same for every seed, so questions written
    for one site mean the same on another."""

    def __init__(self) -> None:
        counts = Counter(w.lower() for text in _demo_texts() for w in _WORD.findall(text))
        # Ties are broken by spelling, so the ranking does not depend on file order.
        ranked = [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
        ranked = [w for w in ranked if len(w) > 1 or w in ("a", "i")]
        known = set(ranked)
        rng = random.Random(0)
        tail: list[str] = []
        while len(tail) < SYNTHETIC_WORDS:
            word = _synthetic_word(rng)
            if word not in known:
                known.add(word)
                tail.append(word)
        # Words no article contains: questions about things the help centre never says.
        self.unused: list[str] = []
        while len(self.unused) < 200:
            word = _synthetic_word(rng)
            if word not in known:
                known.add(word)
                self.unused.append(word)
        self.words = ranked + tail
        self.cum_weights = _zipf(len(self.words))
        self.content = [w for w in self.words if w not in _STOP and len(w) > 2]
        self.content_cum = _zipf(len(self.content))
        # Topics are drawn from a flatter distribution: an article is rarely about the
        # commonest words, which are common because every article uses them a little.
        self.topic_cum = _zipf(len(self.content), exponent=0.5)


def _zipf(n: int, exponent: float = 1.0) -> list[float]:
    """Cumulative weights 1 / (rank + ZIPF_SHIFT) ** exponent for ranks 1..n."""
    total, out = 0.0, []
    for rank in range(1, n + 1):
        total += 1 / (rank + ZIPF_SHIFT) ** exponent
        out.append(total)
    return out


def product_name(seed: int, index: int) -> str:
    # A generator per product, so a name does not depend on how many articles came
    # before it: questions can name the same products at every size.
    rng = random.Random(seed * 1_000_003 + index)
    name = _synthetic_word(rng).capitalize()
    return f"Lumen {name}" if rng.random() < 0.5 else name


class Writer:
    """Articles and questions sampled from the vocabulary (deterministic for a seed)."""

    def __init__(self, vocabulary: Vocabulary, seed: int) -> None:
        self.v = vocabulary
        self.seed = seed
        self.rng = random.Random(seed)
        self.topic: list[str] = []

    def sample(self, n: int) -> list[str]:
        words = self.rng.choices(self.v.words, cum_weights=self.v.cum_weights, k=n)
        if self.topic:
            # Help-centre articles are about something: part of their content words
            # come from the article's topic, so words cluster in articles as in real
            # ones rather than being spread evenly over all chunks.
            for i, word in enumerate(words):
                if word not in _STOP and self.rng.random() < TOPIC_SHARE:
                    words[i] = self.rng.choice(self.topic)
        return words

    def content_words(self, n: int) -> list[str]:
        return self.rng.choices(self.v.content, cum_weights=self.v.content_cum, k=n)

    def sentence(self, product: str) -> str:
        words = self.sample(self.rng.randint(6, 22))
        roll = self.rng.random()
        if roll < 0.15:
            words.insert(self.rng.randrange(len(words)), product)
        elif roll < 0.25:
            words.insert(self.rng.randrange(len(words)), str(self.rng.randint(2, 90)))
        elif roll < 0.28:
            words.insert(self.rng.randrange(len(words)), f"E{self.rng.randint(100, 999)}")
        text = " ".join(words)
        return text[0].upper() + text[1:] + self.rng.choice(".....?!:")

    def paragraph(self, product: str) -> str:
        if self.rng.random() < 0.2:
            return "\n".join(
                f"{i + 1}. {self.sentence(product)}" if self.rng.random() < 0.5
                else f"- {self.sentence(product)}"
                for i in range(self.rng.randint(3, 6))
            )  # fmt: skip
        return " ".join(self.sentence(product) for _ in range(self.rng.randint(2, 6)))

    def heading(self) -> str:
        words = self.content_words(self.rng.randint(2, 5))
        text = " ".join(
            self.rng.choice(self.topic) if self.rng.random() < 0.5 else w for w in words
        )
        return text[0].upper() + text[1:]

    def new_topic(self) -> None:
        self.topic = []
        while len(self.topic) < TOPIC_WORDS:
            word = self.rng.choices(self.v.content, cum_weights=self.v.topic_cum)[0]
            if word not in self.topic:
                self.topic.append(word)

    def article(self, index: int, prefix: str) -> GeneratedArticle:
        # A new product every ARTICLES_PER_PRODUCT articles: a larger help centre
        # documents more products, so its vocabulary grows with it.
        product = product_name(self.seed, index // ARTICLES_PER_PRODUCT)
        self.new_topic()
        subject = " ".join(self.rng.sample(self.topic, self.rng.randint(2, 4)))
        if self.rng.random() < 0.5:
            subject = f"{subject} on the {product}"
        title = self.rng.choice(_TITLE_FORMS).format(subject)
        title = title[0].upper() + title[1:]
        parts = [f"# {title}", self.paragraph(product)]
        for _ in range(self.rng.randint(3, 6)):
            parts.append(f"## {self.heading()}")
            parts.extend(self.paragraph(product) for _ in range(self.rng.randint(1, 2)))
        slug = f"{prefix}-{index}"
        return GeneratedArticle(
            source=f"generated/{slug}.md",
            title=title,
            body="\n\n".join(parts) + "\n",
            url=f"https://help.example.com/articles/{slug}",
            tags=[*self.rng.sample(self.topic, self.rng.randint(1, 4)), product.lower()],
        )

    def question(self, products: list[str]) -> str:
        roll = self.rng.random()
        if roll < 0.4:  # short: a few content words
            text = self.rng.choice(_QUESTION_FORMS).format(
                " ".join(self.content_words(self.rng.randint(2, 4)))
            )
        elif roll < 0.8:  # casual: words as they come, at least one content word
            words = self.sample(self.rng.randint(5, 9))
            words[self.rng.randrange(len(words))] = self.content_words(1)[0]
            text = self.rng.choice(_QUESTION_FORMS).format(" ".join(words))
        else:
            # Long, with context: like the labelled long questions, about one thing,
            # so drawn with a topic as articles are (not 40 unrelated words).
            self.new_topic()
            text = " ".join(self.sentence(self.rng.choice(products)) for _ in range(2))
            self.topic = []
        words = text.split()
        if self.rng.random() < 0.2:
            words.insert(self.rng.randrange(len(words) + 1), self.rng.choice(products))
        if self.rng.random() < 0.1:
            words.insert(self.rng.randrange(len(words) + 1), self.rng.choice(self.v.unused))
        if self.rng.random() < 0.25:
            long = [i for i, w in enumerate(words) if len(w) >= 5 and w.isalpha()]
            if long:
                i = self.rng.choice(long)
                words[i] = self.typo(words[i])
        return " ".join(words)

    def typo(self, word: str) -> str:
        i = self.rng.randrange(1, len(word) - 1)
        kind = self.rng.randrange(4)
        if kind == 0:
            return word[:i] + word[i + 1 :]  # a letter left out
        if kind == 1:
            return word[:i] + word[i + 1] + word[i] + word[i + 2 :]  # two swapped
        if kind == 2:
            return word[:i] + word[i] + word[i:]  # one doubled
        return word[:i] + self.rng.choice("aeioustnr") + word[i + 1 :]  # one wrong


def questions(vocabulary: Vocabulary, seed: int, n: int) -> list[tuple[str, str]]:
    """(kind, text): the labelled questions, then generated ones up to n, shuffled."""
    from tests.kb_questions import QUESTIONS

    rng = random.Random(seed)
    labelled = [("labelled", q) for q, _ in QUESTIONS]
    if n <= len(labelled):
        return rng.sample(labelled, n)
    # Products every size has (the smallest useful size has hundreds of articles).
    products = [product_name(seed, i) for i in range(QUESTION_PRODUCTS)]
    writer = Writer(vocabulary, seed + 2)
    generated = [("generated", writer.question(products)) for _ in range(n - len(labelled))]
    mixed = labelled + generated
    rng.shuffle(mixed)
    return mixed


# --- Loading ---------------------------------------------------------------------------


@dataclass
class Built:
    site_id: int
    chunks: int = 0
    articles: int = 0
    generated: list[int] = field(default_factory=list)  # article ids
    seconds: float = 0.0


def build_site(name: str, vocabulary: Vocabulary, seed: int, chunks: int) -> Built:
    """A site with the demo articles (through the product's importer) and generated
    ones (bulk-loaded) until it has at least `chunks` chunks."""
    from conversations.knowledge.chunking import chunk
    from conversations.knowledge.importer import import_path
    from conversations.models import Chunk, Site

    started = time.perf_counter()
    site = Site.objects.create(name=name)
    report = import_path(site, DEMO_KB)
    assert not report.rejected, report.rejected
    built = Built(site.pk, chunks=Chunk.objects.filter(site=site).count())
    built.articles = len(report.added)
    writer = Writer(vocabulary, seed)
    batch: list[tuple[GeneratedArticle, list]] = []
    index = 0
    while built.chunks < chunks:
        article = writer.article(index, f"s{seed}")
        index += 1
        pieces = chunk(article.body)
        built.chunks += len(pieces)
        batch.append((article, pieces))
        if len(batch) == LOAD_BATCH or built.chunks >= chunks:
            built.generated += bulk_load(site, batch)
            batch = []
            print(f"  {name}: {built.chunks:,} chunks", end="\r", file=sys.stderr, flush=True)
    built.articles += index
    built.seconds = time.perf_counter() - started
    print(file=sys.stderr)
    return built


def bulk_load(site, batch: list[tuple[GeneratedArticle, list]]) -> list[int]:
    """Store articles as `article_upsert` would, set-wise: the rows of
    `store._reindex` (chunks, search vectors, document frequencies, terms) for many
    articles per statement instead of a few statements per article."""
    from django.db import connection, transaction

    from conversations.knowledge.store import _TERM, MAX_TAGS
    from conversations.models import Article, Chunk, KnowledgeLexeme, KnowledgeTerm

    chunk_table = Chunk._meta.db_table
    lexeme_table = KnowledgeLexeme._meta.db_table
    with transaction.atomic():
        articles = Article.objects.bulk_create(
            Article(
                site=site,
                source=a.source,
                title=a.title,
                body=a.body,
                url=a.url,
                tags=[t for t in a.tags if t][:MAX_TAGS],  # as article_upsert keeps them
                published=True,
            )
            for a, _ in batch
        )
        ids = [article.pk for article in articles]
        Chunk.objects.bulk_create(
            (
                Chunk(
                    article=article,
                    site_id=site.pk,
                    ordinal=i,
                    heading=p.heading[:300],
                    text=p.text,
                )
                for article, (_, pieces) in zip(articles, batch, strict=True)
                for i, p in enumerate(pieces)
            ),
            batch_size=2000,
        )
        tags = [" ".join(str(tag) for tag in article.tags) for article in articles]
        with connection.cursor() as cursor:
            # The expression of store._reindex, with each article's title and tags.
            cursor.execute(
                f"UPDATE {chunk_table} AS c SET search_vector ="
                " setweight(to_tsvector('english', x.title), 'A')"
                " || setweight(to_tsvector('english', x.tags || ' ' || c.heading), 'B')"
                " || setweight(to_tsvector('english', c.text), 'C')"
                " FROM unnest(%s::bigint[], %s::text[], %s::text[]) AS x(id, title, tags)"
                " WHERE c.article_id = x.id",
                [ids, [article.title for article in articles], tags],
            )
            # store._count_lexemes(sign=1), for all of the batch's articles at once:
            # ts_stat's ndoc over them is the sum of its per-article ndoc.
            listed = ",".join(str(int(i)) for i in ids)
            selected = f"SELECT search_vector FROM {chunk_table} WHERE article_id IN ({listed})"
            cursor.execute(
                f"INSERT INTO {lexeme_table} (site_id, lexeme, chunks)"
                " SELECT %s, word, ndoc FROM ts_stat(%s) WHERE length(word) <= 100"
                f" UNION ALL SELECT %s, '', count(*) FROM {chunk_table}"
                " WHERE article_id = ANY(%s)"
                " ON CONFLICT (site_id, lexeme) DO UPDATE SET chunks ="
                f" {lexeme_table}.chunks + EXCLUDED.chunks",
                [site.pk, selected, site.pk, ids],
            )
        terms = set()
        for article, tag_text in zip(articles, tags, strict=True):
            words = _TERM.findall(f"{article.title} {tag_text} {article.body}")
            terms.update(word.lower() for word in words)
        KnowledgeTerm.objects.bulk_create(
            [KnowledgeTerm(site_id=site.pk, term=term) for term in sorted(terms)],
            ignore_conflicts=True,
            batch_size=2000,
        )
    return ids


def snapshot(site_id: int, article_ids: list[int] | None = None) -> dict:
    """A site's knowledge rows in comparable form (ids left out: they differ)."""
    from django.db import connection

    from conversations.models import Article, Chunk, KnowledgeLexeme, KnowledgeTerm

    only = " AND a.id = ANY(%s)" if article_ids is not None else ""
    extra = [article_ids] if article_ids is not None else []
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT a.source, c.ordinal, c.heading, c.text, c.search_vector::text"
            f" FROM {Chunk._meta.db_table} c JOIN {Article._meta.db_table} a"
            f" ON a.id = c.article_id WHERE c.site_id = %s{only}",
            [site_id, *extra],
        )
        chunks = {(src, ordinal): rest for src, ordinal, *rest in cursor.fetchall()}
        cursor.execute(
            f"SELECT lexeme, chunks FROM {KnowledgeLexeme._meta.db_table}"
            " WHERE site_id = %s AND chunks <> 0",
            [site_id],
        )
        lexemes = dict(cursor.fetchall())
        cursor.execute(
            f"SELECT term FROM {KnowledgeTerm._meta.db_table} WHERE site_id = %s", [site_id]
        )
        terms = {term for (term,) in cursor.fetchall()}
    return {"chunks": chunks, "lexemes": lexemes, "terms": terms}


def check_bulk_load(vocabulary: Vocabulary, seed: int) -> str:
    """The same articles stored through `article_upsert` one by one and through
    `bulk_load` must give the same chunks, vectors, frequencies and terms."""
    from conversations.knowledge.chunking import chunk
    from conversations.knowledge.importer import import_path
    from conversations.knowledge.store import article_upsert
    from conversations.models import Site

    writer = Writer(vocabulary, seed)
    generated = [writer.article(i, "check") for i in range(VERIFY_ARTICLES)]
    product = Site.objects.create(name="check: article_upsert")
    import_path(product, DEMO_KB)
    for a in generated:
        article_upsert(
            site=product, source=a.source, title=a.title, body=a.body, url=a.url, tags=a.tags
        )
    bulk = Site.objects.create(name="check: bulk load")
    import_path(bulk, DEMO_KB)
    bulk_load(bulk, [(a, chunk(a.body)) for a in generated])
    want, got = snapshot(product.pk), snapshot(bulk.pk)
    for part in ("chunks", "lexemes", "terms"):
        if want[part] != got[part]:
            raise SystemExit(f"bulk load differs from article_upsert in {part}")
    return (
        f"bulk load = article_upsert on 30 demo + {VERIFY_ARTICLES} generated articles: "
        f"{len(want['chunks'])} chunks (text and search_vector), "
        f"{len(want['lexemes'])} document frequencies, {len(want['terms'])} terms identical"
    )


def check_resave(built: Built, seed: int) -> str:
    """Re-saving a sample through `article_save` must change none of the site's rows,
    and the stored document frequencies must be those of the site's chunks."""
    from django.db import connection

    from conversations.knowledge.store import article_save
    from conversations.models import Article, Chunk, KnowledgeLexeme

    sample = random.Random(seed).sample(built.generated, RESAVE_SAMPLE)
    before = snapshot(built.site_id, sample)
    for article in Article.objects.filter(pk__in=sample):
        article_save(article)
    after = snapshot(built.site_id, sample)
    for part in ("chunks", "lexemes", "terms"):
        if before[part] != after[part]:
            raise SystemExit(f"re-saving articles through article_save changed {part}")
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT word, ndoc FROM ts_stat(%s) WHERE length(word) <= 100 UNION ALL"
            f" SELECT '', count(*) FROM {Chunk._meta.db_table} WHERE site_id = %s",
            [
                f"SELECT search_vector FROM {Chunk._meta.db_table} WHERE site_id = "
                f"{int(built.site_id)}",
                built.site_id,
            ],
        )
        recounted = dict(cursor.fetchall())
    if recounted != after["lexemes"]:
        raise SystemExit(f"{KnowledgeLexeme.__name__} differs from ts_stat over the chunks")
    return (
        f"re-saving {RESAVE_SAMPLE} articles with article_save changed nothing "
        f"({len(before['chunks'])} chunks); {len(recounted):,} document frequencies "
        "= ts_stat over all the site's chunks"
    )


def matching_share(site_id: int, asked: list[tuple[str, str]]) -> float:
    """Median share of the site's chunks that the labelled questions match: how the
    generated articles compare with the demo help centre's own (the calibration of
    TOPIC_SHARE)."""
    from conversations.models import Chunk

    chunks = Chunk.objects.filter(site_id=site_id).count()
    return statistics.median(
        candidates(site_id, query) / chunks for kind, query in asked if kind == "labelled"
    )


def demo_share(asked: list[tuple[str, str]]) -> float:
    from conversations.knowledge.importer import import_path
    from conversations.models import Site

    site = Site.objects.create(name="demo help centre only")
    import_path(site, DEMO_KB)
    return matching_share(site.pk, asked)


def reset_tables() -> None:
    from django.db import connection

    from conversations.models import Article, Chunk, KnowledgeLexeme, KnowledgeTerm, Site

    tables = [m._meta.db_table for m in (Chunk, KnowledgeLexeme, KnowledgeTerm, Article)]
    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {', '.join(tables)}")
    Site.objects.all().delete()


def vacuum_analyze() -> None:
    from django.db import connection

    from conversations.models import Article, Chunk, KnowledgeLexeme, KnowledgeTerm

    with connection.cursor() as cursor:
        for model in (Chunk, KnowledgeLexeme, KnowledgeTerm, Article):
            cursor.execute(f"VACUUM ANALYZE {model._meta.db_table}")


# --- Measuring -------------------------------------------------------------------------


@dataclass
class Call:
    kind: str  # "labelled" or "generated"
    query: str
    seconds: float = 0.0
    profiled_seconds: float = 0.0  # the same call in the profiled pass
    hits: int = 0
    candidates: int = 0
    # (stage, sql, params, seconds) per statement, from the profiled pass.
    statements: list[tuple[str, str, object, float]] = field(default_factory=list)


@dataclass
class Result:
    chunks: int
    other_chunks: int
    articles: int
    terms: int
    lexemes: int
    labelled_share: float
    background: float
    calls: list[Call]
    foreign_hits: int
    checks: list[str]
    load_seconds: float
    quality: Quality
    explained: list[str] = field(default_factory=list)

    def ms(self, q: float) -> float:
        return percentile([c.seconds for c in self.calls], q) * 1000


@dataclass
class Quality:
    """What the ranking budget costs: retrieve() against ranking every chunk."""

    budget: int
    same: float  # share of queries whose hits equal those of ranking every chunk
    same_top: float  # ... whose best hit does
    budgeted: Evaluation  # the labelled questions, with the budget
    unlimited: Evaluation  # ... ranking every chunk


def quality(site_id: int, asked: list[tuple[str, str]]) -> Quality:
    from django.conf import settings
    from django.test.utils import override_settings

    from conversations.knowledge.evaluation import evaluate
    from conversations.knowledge.retrieval import retrieve
    from conversations.models import Article
    from tests.kb_questions import QUESTIONS

    def ids(query: str) -> list[int]:
        return [hit.chunk_id for hit in retrieve(site_id=site_id, query=query)]

    slugs = {
        url.rstrip("/").rsplit("/", 1)[-1]: pk
        for pk, url in Article.objects.filter(site_id=site_id).values_list("pk", "url")
    }
    budgeted = [ids(query) for _, query in asked]
    labelled = evaluate(QUESTIONS, lambda q: retrieve(site_id=site_id, query=q), slugs)
    with override_settings(KNOWLEDGE_RANK_BUDGET=10**9):
        unlimited = [ids(query) for _, query in asked]
        everything = evaluate(QUESTIONS, lambda q: retrieve(site_id=site_id, query=q), slugs)
    pairs = list(zip(budgeted, unlimited, strict=True))
    return Quality(
        budget=settings.KNOWLEDGE_RANK_BUDGET,
        same=sum(a == b for a, b in pairs) / len(pairs),
        same_top=sum(a[:1] == b[:1] for a, b in pairs) / len(pairs),
        budgeted=labelled,
        unlimited=everything,
    )


class Recorder:
    """Times every statement Django executes (connection.execute_wrapper)."""

    def __init__(self) -> None:
        self.statements: list[tuple[str, str, object, float]] = []

    def __call__(self, execute, sql, params, many, context):
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            elapsed = time.perf_counter() - started
            self.statements.append((stage_of(sql), sql, params, elapsed))


def stage_of(sql: str) -> str:
    """Which step of `retrieve()` a statement is (by what only that step's SQL has)."""
    if "similarity(" in sql:
        return "typo correction (trigram)"
    if "LATERAL" in sql or "ORDER BY" in sql and "score" in sql:
        return "ranking"
    if "ln(1 +" in sql:
        return "idf lookup"
    if "knowledgeterm" in sql:
        return "known terms"
    return "other"


STAGES = ("known terms", "typo correction (trigram)", "idf lookup", "ranking", "other")


def candidates(site_id: int, query: str) -> int:
    """How many of the site's chunks match any of the query's lexemes: what the
    ranking step scores (retrieve()'s own steps up to its candidate set)."""
    from django.db import connection

    from conversations.knowledge.retrieval import _lexemes, content_words, corrected
    from conversations.models import Chunk

    words = corrected(site_id, content_words(query))
    if not words:
        return 0
    lexemes = [lexeme for lexeme, _, chunks, _ in _lexemes(site_id, words) if chunks]
    if not lexemes:
        return 0
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT count(*) FROM {Chunk._meta.db_table} WHERE site_id = %s AND search_vector"
            " @@ (SELECT string_agg(quote_literal(l), ' | ')::tsquery FROM unnest(%s::text[]) l)",
            [site_id, lexemes],
        )
        return cursor.fetchone()[0]


def measure(site_id: int, asked: list[tuple[str, str]]) -> tuple[list[Call], int]:
    """Per query: wall time of retrieve() (after a warm-up pass over all of them), hits,
    candidates and, in a separate pass, the time of each statement; and how many hits
    came from another site's articles (must be 0)."""
    from django.db import connection

    from conversations.knowledge.retrieval import retrieve
    from conversations.models import Article

    own = set(Article.objects.filter(site_id=site_id).values_list("pk", flat=True))
    calls = [Call(kind, query) for kind, query in asked]
    for call in calls:  # warm-up: caches, and the first-use costs of each code path
        retrieve(site_id=site_id, query=call.query)
    foreign = 0
    for call in calls:
        started = time.perf_counter()
        hits = retrieve(site_id=site_id, query=call.query)
        call.seconds = time.perf_counter() - started
        call.hits = len(hits)
        foreign += sum(hit.article_id not in own for hit in hits)
    for call in calls:
        recorder = Recorder()
        with connection.execute_wrapper(recorder):
            started = time.perf_counter()
            retrieve(site_id=site_id, query=call.query)
            call.profiled_seconds = time.perf_counter() - started
        call.statements = recorder.statements
        call.candidates = candidates(site_id, call.query)
    return calls, foreign


def explain(calls: list[Call], limit: int) -> list[str]:
    """EXPLAIN (ANALYZE, BUFFERS) of the slowest statement of each of the slowest
    queries: the whole plan of the first, the main lines of the others."""
    from django.db import connection

    lines = []
    slowest = sorted(calls, key=lambda c: c.seconds, reverse=True)[:limit]
    for n, call in enumerate(slowest):
        stage, sql, params, seconds = max(call.statements, key=lambda s: s[3])
        with connection.cursor() as cursor:
            cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql, params)
            plan = [row[0] for row in cursor.fetchall()]
        lines.append(
            f"  {call.seconds * 1000:.1f} ms, {call.candidates:,} candidates: {call.query[:90]!r}"
        )
        lines.append(f"    slowest statement: {stage}, {seconds * 1000:.1f} ms")
        keep = plan if n == 0 else [
            line for line in plan
            if re.search(r"Scan|Sort|Execution Time|Buffers: shared", line)
        ]  # fmt: skip
        lines.extend("      " + line for line in keep)
    return lines


def measure_size(
    vocabulary: Vocabulary, seed: int, size: int, asked: list[tuple[str, str]]
) -> Result:
    from conversations.models import KnowledgeLexeme, KnowledgeTerm

    reset_tables()
    print(f"size {size:,}: loading", file=sys.stderr, flush=True)
    site = build_site(f"site of {size:,} chunks", vocabulary, seed, size)
    other = build_site(f"other site of {size:,} chunks", vocabulary, seed + 1, size)
    checks = [check_resave(site, seed)]
    vacuum_analyze()
    print(f"size {size:,}: measuring", file=sys.stderr, flush=True)
    background = background_load()
    calls, foreign = measure(site.site_id, asked)
    print(f"size {size:,}: comparing with ranking every chunk", file=sys.stderr, flush=True)
    ranked = quality(site.site_id, asked)
    return Result(
        chunks=site.chunks,
        other_chunks=other.chunks,
        articles=site.articles,
        terms=KnowledgeTerm.objects.filter(site_id=site.site_id).count(),
        lexemes=KnowledgeLexeme.objects.filter(site_id=site.site_id).count() - 1,
        labelled_share=statistics.median(
            c.candidates / site.chunks for c in calls if c.kind == "labelled"
        ),
        background=background,
        calls=calls,
        foreign_hits=foreign,
        checks=checks,
        load_seconds=site.seconds + other.seconds,
        quality=ranked,
    )


# --- Report ----------------------------------------------------------------------------


def render(results: list[Result], demo: float, force_explain: bool) -> tuple[str, bool]:
    lines = []
    head = (
        f"{'chunks':>8} {'articles':>8} {'terms':>6} {'queries':>7} {'p50':>6} {'p90':>6} "
        f"{'p99':>6} {'max':>6} {'candidates p50':>14} {'p90':>7} {'answered':>8} {'bg load':>7}"
    )
    lines += [head, "-" * len(head)]
    for r in results:
        cands = [c.candidates for c in r.calls]
        answered = sum(c.hits > 0 for c in r.calls) / len(r.calls)
        lines.append(
            f"{r.chunks:>8,} {r.articles:>8,} {r.terms:>6,} {len(r.calls):>7} "
            f"{r.ms(50):>6.1f} {r.ms(90):>6.1f} {r.ms(99):>6.1f} {r.ms(100):>6.1f} "
            f"{statistics.median(cands):>14,.0f} {percentile(cands, 90):>7,} "
            f"{answered * 100:>7.0f}% {r.background * 100:>6.0f}%"
        )
    lines.append("(ms per retrieve() call, wall time in this process; candidates: the site's")
    lines.append(" chunks matching any query lexeme, of which at most the budget are ranked;")
    lines.append(" answered: share with a hit >= MIN_SCORE)")
    for r in results:
        lines.append(
            f"  {r.chunks:,} chunks: the labelled questions match a median "
            f"{r.labelled_share * 100:.0f}% of the site's chunks (demo help centre alone: "
            f"{demo * 100:.0f}%)"
        )
    for r in results:
        q = r.quality
        lines.append(
            f"  {r.chunks:,} chunks, ranking budget {q.budget:,}: hits equal to ranking every"
            f" chunk for {q.same * 100:.1f}% of the queries, the best hit for"
            f" {q.same_top * 100:.1f}%; labelled questions hit@1/hit@3"
            f" {q.budgeted.hit_at_1:.3f}/{q.budgeted.hit_at_3:.3f} (every chunk ranked:"
            f" {q.unlimited.hit_at_1:.3f}/{q.unlimited.hit_at_3:.3f})"
        )
    passed = True
    for r in results:
        ok = r.foreign_hits == 0
        passed = passed and ok
        lines.append(
            f"  {r.chunks:,} chunks: {'PASS' if ok else 'FAIL'}  hits from the other site "
            f"({r.other_chunks:,} chunks): {r.foreign_hits}"
        )
    target = [r for r in results if r.chunks >= TARGET_CHUNKS]
    for r in target[:1]:
        ok = r.ms(99) <= TARGET_P99_MS
        passed = passed and ok
        lines.append(
            f"  {r.chunks:,} chunks: {'PASS' if ok else 'FAIL'}  p99 {r.ms(99):.1f} ms "
            f"<= {TARGET_P99_MS:.0f} ms"
        )
    if not target:
        lines.append(f"  (the target applies at {TARGET_CHUNKS:,} chunks; not in this run)")
    for r in results:
        lines.append("")
        lines.append(
            f"time per step at {r.chunks:,} chunks, in a separate pass with each statement "
            "timed (ms per query; p50 and p99 over the queries where the step ran)"
        )
        lines.append(f"  {'step':<28} {'ran':>5} {'p50':>7} {'p99':>7} {'share of total':>15}")
        total = sum(c.profiled_seconds for c in r.calls)
        for stage in STAGES:
            per = [
                sum(s[3] for s in c.statements if s[0] == stage)
                for c in r.calls
                if any(s[0] == stage for s in c.statements)
            ]
            if per:
                lines.append(
                    f"  {stage:<28} {len(per) / len(r.calls) * 100:>4.0f}% "
                    f"{percentile(per, 50) * 1000:>7.2f} {percentile(per, 99) * 1000:>7.2f} "
                    f"{sum(per) / total * 100:>14.0f}%"
                )
        rest = [c.profiled_seconds - sum(s[3] for s in c.statements) for c in r.calls]
        lines.append(
            f"  {'Python (rest of the call)':<28} {100:>4}% {percentile(rest, 50) * 1000:>7.2f} "
            f"{percentile(rest, 99) * 1000:>7.2f} {max(0.0, sum(rest)) / total * 100:>14.0f}%"
        )
        for kind in ("labelled", "generated"):
            times = [c.seconds for c in r.calls if c.kind == kind]
            if times:
                lines.append(
                    f"  {kind} questions ({len(times)}): p50 {percentile(times, 50) * 1000:.1f}"
                    f" ms, p99 {percentile(times, 99) * 1000:.1f} ms"
                )
        if force_explain or r.ms(99) > TARGET_P99_MS:
            lines.append(f"slowest queries at {r.chunks:,} chunks, EXPLAIN (ANALYZE, BUFFERS):")
            lines += r.explained
    return "\n".join(lines), passed


# --- Main ------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.retrieval", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--chunks", default="10000,100000", help="comma-separated sizes")
    parser.add_argument("--queries", type=int, default=500, help="queries timed per size")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--explain", action="store_true",
        help=f"EXPLAIN the {EXPLAIN_QUERIES} slowest queries even when p99 meets the target",
    )  # fmt: skip
    parser.add_argument(
        "--database-url",
        default=os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/"),
        help="the PostgreSQL server; a database of the benchmark's own is created there",
    )
    return parser.parse_args(argv)


@contextlib.contextmanager
def django_on(db_url: str) -> Iterator[None]:
    """Django configured as in production (DEBUG off: no query log), on db_url."""
    os.environ["DJANGO_SETTINGS_MODULE"] = "supportbot.settings"
    os.environ["DATABASE_URL"] = db_url
    os.environ["DEBUG"] = "0"
    os.environ.setdefault("SECRET_KEY", "benchmark-only-insecure-secret-key-0123456789")
    import django
    from django.core.management import call_command
    from django.db import connection

    django.setup()
    call_command("migrate", "--noinput", verbosity=0)
    try:
        yield
    finally:
        connection.close()
        # The pool's connections too, or dropping the database waits for them.
        with contextlib.suppress(Exception):
            connection.close_pool()


def server_version() -> str:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        return cursor.fetchone()[0].split()[0]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = [int(part) for part in args.chunks.split(",") if part.strip()]
    started = datetime.datetime.now(datetime.UTC)
    with bench_database(args.database_url, f"supportbot_bench_{os.getpid()}") as db_url:
        with django_on(db_url):
            background = background_load()
            vocabulary = Vocabulary()
            asked = questions(vocabulary, args.seed, args.queries)
            labelled = sum(kind == "labelled" for kind, _ in asked)
            print(
                f"retrieval benchmark {started:%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores "
                f"(background load before the run: {background * 100:.0f}% of them), "
                f"python {platform.python_version()}, PostgreSQL {server_version()}; "
                f"{len(asked)} queries ({labelled} labelled, {len(asked) - labelled} "
                f"generated), vocabulary {len(vocabulary.words):,} words, seed {args.seed}",
                flush=True,
            )
            print(check_bulk_load(vocabulary, args.seed + 3), flush=True)
            demo = demo_share(asked)
            results = []
            for size in sizes:
                result = measure_size(vocabulary, args.seed, size, asked)
                result.explained = (
                    explain(result.calls, EXPLAIN_QUERIES)
                    if args.explain or result.ms(99) > TARGET_P99_MS
                    else []
                )
                for line in result.checks:
                    print(f"{result.chunks:,} chunks: {line}", flush=True)
                print(
                    f"{result.chunks:,} chunks: loaded in {result.load_seconds:.0f} s "
                    f"(both sites); {result.lexemes:,} lexemes",
                    flush=True,
                )
                results.append(result)
            reset_tables()
    table, passed = render(results, demo, args.explain)
    print(table)
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
