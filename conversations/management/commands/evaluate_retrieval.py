"""Print how well retrieval finds the right demo article for labelled questions."""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

import conversations
from conversations.knowledge import retrieval
from conversations.knowledge.evaluation import evaluate
from conversations.knowledge.importer import import_path
from conversations.models import Site


class _Rollback(Exception):
    pass


class Command(BaseCommand):
    help = (
        "Load the demo help centre into a scratch site (rolled back afterwards) and print "
        "hit@1, hit@3 and no-answer precision/recall on tests/kb_questions.py."
    )

    def add_arguments(self, parser):
        parser.add_argument("--threshold", type=float, default=retrieval.MIN_SCORE)
        parser.add_argument("--misses", action="store_true", help="list the questions missed")

    def handle(self, *args, **options):
        try:
            from tests.kb_questions import QUESTIONS
        except ImportError as exc:
            raise CommandError("run this from a checkout: it reads tests/kb_questions.py") from exc
        try:
            with transaction.atomic():
                site = Site.objects.create(name="retrieval evaluation (scratch)")
                import_path(site, Path(conversations.__file__).parent / "demo_kb")
                # The labels name articles by their URL's last segment.
                slugs = {a.url.rstrip("/").rsplit("/", 1)[-1]: a.pk for a in site.articles.all()}
                result = evaluate(
                    QUESTIONS,
                    lambda q: retrieval.retrieve(
                        site_id=site.pk, query=q, min_score=options["threshold"]
                    ),
                    slugs,
                )
                raise _Rollback
        except _Rollback:
            pass
        self.stdout.write(result.table() + f"\n  threshold            {options['threshold']}")
        if options["misses"]:
            for question, expected, got in result.misses:
                self.stdout.write(f"  miss: {question!r}: expected {expected}, got {got}")
