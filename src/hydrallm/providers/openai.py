"""OpenAI-compatible APIs (chat completions, Responses, embeddings, ...)."""

from __future__ import annotations

from hydrallm.providers.base import Provider


class OpenAIProvider(Provider):
    api_type = "openai"
