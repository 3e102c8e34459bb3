"""How well retrieval finds the right article: hit@1, hit@3, no-answer precision/recall.

Used by `manage.py evaluate_retrieval` and by the tests that assert floors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from conversations.knowledge.retrieval import Hit


@dataclass
class Evaluation:
    answerable: int = 0
    hit1: int = 0
    hit3: int = 0
    unanswerable: int = 0
    # "No answer" as the system says it: nothing retrieved above the threshold.
    said_none_correctly: int = 0
    said_none_wrongly: int = 0
    misses: list[tuple[str, str, list[str]]] = field(default_factory=list)

    @property
    def hit_at_1(self) -> float:
        return self.hit1 / self.answerable if self.answerable else 0.0

    @property
    def hit_at_3(self) -> float:
        return self.hit3 / self.answerable if self.answerable else 0.0

    @property
    def no_answer_precision(self) -> float:
        said = self.said_none_correctly + self.said_none_wrongly
        return self.said_none_correctly / said if said else 1.0

    @property
    def no_answer_recall(self) -> float:
        return self.said_none_correctly / self.unanswerable if self.unanswerable else 1.0

    def table(self) -> str:
        return (
            f"retrieval on {self.answerable + self.unanswerable} labelled questions "
            f"({self.answerable} answerable, {self.unanswerable} with no answer)\n"
            f"  hit@1                {self.hit_at_1:.3f}\n"
            f"  hit@3                {self.hit_at_3:.3f}\n"
            f"  no-answer precision  {self.no_answer_precision:.3f}\n"
            f"  no-answer recall     {self.no_answer_recall:.3f}"
        )


def articles_in_order(hits: list[Hit]) -> list[int]:
    seen: list[int] = []
    for hit in hits:
        if hit.article_id not in seen:
            seen.append(hit.article_id)
    return seen


def evaluate(
    questions: list[tuple[str, str | None]],
    search: Callable[[str], list[Hit]],
    article_of_slug: dict[str, int],
) -> Evaluation:
    """`search` returns hits best first (already thresholded)."""
    result = Evaluation()
    for question, slug in questions:
        hits = search(question)
        ranked = articles_in_order(hits)
        if slug is None:
            result.unanswerable += 1
            if not hits:
                result.said_none_correctly += 1
            continue
        result.answerable += 1
        if not hits:
            result.said_none_wrongly += 1
        expected = article_of_slug[slug]
        result.hit1 += ranked[:1] == [expected]
        result.hit3 += expected in ranked[:3]
        if expected not in ranked[:3]:
            names = {v: k for k, v in article_of_slug.items()}
            result.misses.append((question, slug, [names.get(a, "?") for a in ranked[:3]]))
    return result
