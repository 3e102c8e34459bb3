"""Whether a changed `retrieve()` returns exactly what an earlier version returns.

    git show HEAD:conversations/knowledge/retrieval.py > earlier_retrieval.py
    python -m benchmarks.retrieval_same earlier_retrieval.py [--chunks N] [--queries Q]

Creates a database of its own on the server at DATABASE_URL (dropped at the end)
with one site holding the demo help centre and, with --chunks, generated articles
up to N chunks (as benchmarks/retrieval.py builds them), plus a second site of the
same size. Asks the 137 labelled questions of tests/kb_questions.py (with
--queries, generated ones too) of the earlier version (the file given) and of the
current one, one after the other on the same database, and compares every hit:
chunk id, article, title, URL, heading and text exactly, the score to 1e-12.

Scores may differ in their last bits: a score sums its lexemes' weights in the
order the lexemes come from PostgreSQL, and floating-point addition depends on
the order. Both versions run on one database so nothing else differs.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import sys
from pathlib import Path

from benchmarks.retrieval import Vocabulary, build_site, django_on, questions, vacuum_analyze
from benchmarks.run import bench_database


def load_module(path: Path):
    spec = importlib.util.spec_from_file_location("retrieval_before", path)
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up in sys.modules.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def same_hits(old: list[dict], new: list[dict]) -> bool:
    if len(old) != len(new):
        return False
    for a, b in zip(old, new, strict=True):
        if {**a, "score": 0} != {**b, "score": 0}:
            return False
        if not math.isclose(a["score"], b["score"], rel_tol=1e-12):
            return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.retrieval_same", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "before", type=Path, help="the earlier conversations/knowledge/retrieval.py"
    )
    parser.add_argument("--chunks", type=int, default=0, help="generated chunks up to N")
    parser.add_argument("--queries", type=int, default=137, help="labelled, then generated")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--database-url",
        default=os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/"),
    )
    args = parser.parse_args(argv)
    with bench_database(args.database_url, f"supportbot_same_{os.getpid()}") as db_url:
        with django_on(db_url):
            from conversations.knowledge import retrieval as now

            before = load_module(args.before)
            vocabulary = Vocabulary()
            site = build_site("site", vocabulary, args.seed, args.chunks)
            build_site("other site", vocabulary, args.seed + 1, args.chunks)
            vacuum_analyze()
            asked = questions(vocabulary, args.seed, args.queries)
            differ, hits = [], 0
            for _, query in asked:
                old = [vars(h) for h in before.retrieve(site_id=site.site_id, query=query)]
                new = [vars(h) for h in now.retrieve(site_id=site.site_id, query=query)]
                hits += len(new)
                if not same_hits(old, new):
                    differ.append((query, old, new))
    for query, old, new in differ[:5]:
        print(f"differs: {query!r}")
        print(f"  before {[(h['chunk_id'], h['score']) for h in old]}")
        print(f"  now    {[(h['chunk_id'], h['score']) for h in new]}")
    print(
        f"{len(asked) - len(differ)} of {len(asked)} questions return the same hits "
        f"({hits} hits: ids, texts, scores) at {site.chunks:,} chunks"
    )
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
