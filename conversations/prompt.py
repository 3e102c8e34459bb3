"""The request a reply sends to the model: system prompt plus as much history as fits."""

from __future__ import annotations

from conversations import tokens
from conversations.models import Message

_ROLES = {
    Message.Role.VISITOR: "user",
    Message.Role.ASSISTANT: "assistant",
    # A human agent's words are the business's voice in the thread, like the bot's.
    Message.Role.AGENT: "assistant",
}


def build_messages(
    *, system_prompt: str, history: list[Message], budget: int, model: str = ""
) -> list[dict[str, str]]:
    """Chat messages for the model, trimmed oldest-first to `budget` tokens.

    The system prompt and the newest turn are always kept; a newest turn longer than
    the budget is still sent whole (the visitor's limit keeps it bounded).
    """
    system = {"role": "system", "content": system_prompt}
    used = tokens.count_messages([system], model)
    kept: list[dict[str, str]] = []
    for message in reversed(history):
        turn = {"role": _ROLES[message.role], "content": message.text}
        cost = tokens.count(message.text, model) + tokens.MESSAGE_OVERHEAD
        if kept and used + cost > budget:
            break
        kept.append(turn)
        used += cost
    return [system, *reversed(kept)]
