"""One module per API type: outgoing request shape, auth, and the API's error format."""

from __future__ import annotations

from hydrallm.config import ApiType
from hydrallm.providers.base import Provider


def provider_for(api_type: ApiType) -> Provider:
    """The provider implementation for an API type (bedrock imported only when used)."""
    if api_type == "openai":
        from hydrallm.providers.openai import OpenAIProvider

        return OpenAIProvider()
    if api_type == "anthropic":
        from hydrallm.providers.anthropic import AnthropicProvider

        return AnthropicProvider()
    if api_type == "gemini":
        from hydrallm.providers.gemini import GeminiProvider

        return GeminiProvider()
    from hydrallm.providers.bedrock import BedrockProvider

    return BedrockProvider()


__all__ = ["Provider", "provider_for"]
