"""The only code that speaks HTTP to model APIs (OpenAI-compatible Chat Completions)."""

from conversations.llm.client import ChatRequest, ChatResult, LLMClient, LLMError

__all__ = ["ChatRequest", "ChatResult", "LLMClient", "LLMError"]
