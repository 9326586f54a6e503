"""Request translation, per client API x upstream API, with real-shaped bodies."""

from __future__ import annotations

import json
from typing import Any

import pytest

from hydrallm.formats.translate import (
    BadRequest,
    Untranslatable,
    client_api_for_path,
    translator_for,
)
from hydrallm.testing.gemini import validate

PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
WEATHER_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
    "additionalProperties": False,
}

# What Claude Code sends, trimmed: adaptive thinking, a signed thinking block in
# history, a tool round trip, an image, and fields only Anthropic takes.
CLAUDE_CODE: dict[str, Any] = {
    "model": "claude-sonnet-4-6",
    "max_tokens": 64000,
    "system": [
        {"type": "text", "text": "You are Claude Code."},
        {"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}},
    ],
    "messages": [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in this picture, and the weather in Paris?"},
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/png", "data": PNG},
                },
            ],
        },
        {
            "role": "assistant",
            "content": [
                {
                    "type": "thinking",
                    "thinking": "The user wants two things.",
                    "signature": "EqQBCkYIBxgCKkD",
                },
                {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix"},
                {"type": "text", "text": "Let me check."},
                {
                    "type": "tool_use",
                    "id": "toolu_01A",
                    "name": "get_weather",
                    "input": {"city": "Paris"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_01A",
                    "content": [{"type": "text", "text": "18C, sunny"}],
                },
                {"type": "text", "text": "Thanks, go on."},
            ],
        },
    ],
    "tools": [
        {"name": "get_weather", "description": "Weather of a city", "input_schema": WEATHER_SCHEMA}
    ],
    "tool_choice": {"type": "auto"},
    "thinking": {"type": "adaptive"},
    "output_config": {"effort": "high"},
    "context_management": {"edits": [{"type": "clear_tool_uses_20250919"}]},
    "metadata": {"user_id": '{"device_id":"x"}'},
    "service_tier": "auto",
    "stop_sequences": ["\n\nHuman:"],
    "stream": True,
}

OPENCODE_CHAT: dict[str, Any] = {
    "model": "glm-4.6",
    "messages": [
        {"role": "system", "content": "You are opencode."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Describe"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
                },
                {
                    "id": "call_2",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "2C"},
        {"role": "tool", "tool_call_id": "call_2", "content": "25C"},
    ],
    "tools": [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather",
                "parameters": WEATHER_SCHEMA,
            },
        }
    ],
    "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
    "max_completion_tokens": 32000,
    "temperature": 0.2,
    "top_p": 0.9,
    "stop": "END",
    "stream": True,
    "stream_options": {"include_usage": True},
    "store": False,
    "prompt_cache_key": "abc",
    "user": "u1",
}

CODEX_RESPONSES: dict[str, Any] = {
    "model": "gpt-5-codex",
    "instructions": "You are Codex.",
    "input": [
        {
            "type": "message",
            "role": "developer",
            "content": [{"type": "input_text", "text": "Sandbox: read-only."}],
        },
        {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "List files"}],
        },
        {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "gAAAAB..."},
        {
            "type": "function_call",
            "id": "fc_1",
            "call_id": "call_ls",
            "name": "shell",
            "arguments": '{"command":["ls"]}',
        },
        {"type": "function_call_output", "call_id": "call_ls", "output": "a.py\nb.py"},
    ],
    "tools": [
        {
            "type": "function",
            "name": "shell",
            "description": "Run",
            "strict": False,
            "parameters": {
                "type": "object",
                "properties": {"command": {"type": "array", "items": {"type": "string"}}},
            },
        }
    ],
    "tool_choice": "auto",
    "parallel_tool_calls": False,
    "reasoning": {"effort": "medium", "summary": "auto"},
    "include": ["reasoning.encrypted_content"],
    "store": False,
    "prompt_cache_key": "019a-session",
    "max_output_tokens": 4000,
    "text": {
        "format": {
            "type": "json_schema",
            "name": "files",
            "schema": {"type": "object"},
            "strict": True,
        }
    },
    "stream": True,
}


def test_claude_code_to_chat_keeps_meaning_and_drops_anthropic_only_fields() -> None:
    call = translator_for("anthropic", "chat").request(
        json.loads(json.dumps(CLAUDE_CODE)), "glm-4.6"
    )
    body = call.body
    assert (call.path, call.query, call.stream) == ("/v1/chat/completions", "", True)
    assert body["model"] == "glm-4.6"
    assert body["messages"][0] == {"role": "system", "content": "You are Claude Code.\n\nBe brief."}
    user = body["messages"][1]
    assert user["content"][1] == {
        "type": "image_url",
        "image_url": {"url": f"data:image/png;base64,{PNG}"},
    }
    assistant = body["messages"][2]
    # Signed thinking and redacted thinking are Anthropic's: never sent elsewhere.
    assert assistant == {
        "role": "assistant",
        "content": "Let me check.",
        "tool_calls": [
            {
                "id": "toolu_01A",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
            }
        ],
    }
    assert body["messages"][3] == {
        "role": "tool",
        "tool_call_id": "toolu_01A",
        "content": "18C, sunny",
    }
    assert body["messages"][4] == {"role": "user", "content": "Thanks, go on."}
    assert body["tools"][0]["function"]["parameters"] == WEATHER_SCHEMA
    assert body["tool_choice"] == "auto"
    assert body["max_tokens"] == 64000
    assert body["stop"] == ["\n\nHuman:"]
    assert body["reasoning_effort"] == "high"
    assert body["stream_options"] == {"include_usage": True}
    for dropped in ("context_management", "metadata", "service_tier", "thinking", "output_config"):
        assert dropped not in body


def test_claude_code_to_gemini_is_a_body_gemini_accepts() -> None:
    call = translator_for("anthropic", "gemini").request(
        json.loads(json.dumps(CLAUDE_CODE)), "gemini-2.5-pro"
    )
    body = call.body
    assert (call.path, call.query) == (
        "/v1beta/models/gemini-2.5-pro:streamGenerateContent",
        "alt=sse",
    )
    assert validate(body, require_signatures=True) == []
    assert body["systemInstruction"] == {"parts": [{"text": "You are Claude Code.\n\nBe brief."}]}
    roles = [c["role"] for c in body["contents"]]
    assert roles == ["user", "model", "user"]
    assert body["contents"][0]["parts"][1] == {"inlineData": {"mimeType": "image/png", "data": PNG}}
    model_parts = body["contents"][1]["parts"]
    assert model_parts[0] == {"text": "Let me check."}
    assert model_parts[1]["functionCall"] == {"name": "get_weather", "args": {"city": "Paris"}}
    assert body["contents"][2]["parts"][0] == {
        "functionResponse": {"name": "get_weather", "response": {"result": "18C, sunny"}}
    }
    declaration = body["tools"][0]["functionDeclarations"][0]
    assert declaration["parametersJsonSchema"] == WEATHER_SCHEMA
    assert body["toolConfig"] == {"functionCallingConfig": {"mode": "AUTO"}}
    config = body["generationConfig"]
    assert config["maxOutputTokens"] == 64000
    assert config["stopSequences"] == ["\n\nHuman:"]
    # The client asked for thinking: Gemini is asked to include its thoughts.
    assert config["thinkingConfig"] == {"includeThoughts": True, "thinkingBudget": 24576}


def test_chat_to_anthropic() -> None:
    call = translator_for("chat", "anthropic").request(
        json.loads(json.dumps(OPENCODE_CHAT)), "claude-haiku-4-5"
    )
    body = call.body
    assert call.path == "/v1/messages"
    assert body["system"] == "You are opencode."
    assert body["messages"][0]["content"] == [
        {"type": "text", "text": "Describe"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]
    assert body["messages"][1] == {
        "role": "assistant",
        "content": [
            {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Oslo"}},
            {"type": "tool_use", "id": "call_2", "name": "get_weather", "input": {"city": "Rome"}},
        ],
    }
    # Two tool messages become one user turn of two results, ids kept.
    assert body["messages"][2] == {
        "role": "user",
        "content": [
            {
                "type": "tool_result",
                "tool_use_id": "call_1",
                "content": [{"type": "text", "text": "2C"}],
            },
            {
                "type": "tool_result",
                "tool_use_id": "call_2",
                "content": [{"type": "text", "text": "25C"}],
            },
        ],
    }
    assert body["tool_choice"] == {"type": "tool", "name": "get_weather"}
    assert body["tools"] == [
        {"name": "get_weather", "input_schema": WEATHER_SCHEMA, "description": "Weather"}
    ]
    assert (body["max_tokens"], body["temperature"], body["top_p"]) == (32000, 0.2, 0.9)
    assert body["stop_sequences"] == ["END"]
    assert body["stream"] is True
    for dropped in ("store", "prompt_cache_key", "user", "stream_options", "max_completion_tokens"):
        assert dropped not in body


def test_chat_to_gemini() -> None:
    call = translator_for("chat", "gemini").request(
        json.loads(json.dumps(OPENCODE_CHAT)), "gemini-2.5-flash"
    )
    body = call.body
    assert validate(body) == []
    parts = body["contents"][0]["parts"]
    assert parts[2] == {
        "fileData": {"mimeType": "image/jpeg", "fileUri": "https://example.com/cat.jpg"}
    }
    calls = body["contents"][1]["parts"]
    assert [p["functionCall"]["args"]["city"] for p in calls] == ["Oslo", "Rome"]
    # Only the first call of a step carries a signature (Gemini 3 checks that one).
    assert "thoughtSignature" in calls[0] and "thoughtSignature" not in calls[1]
    responses = body["contents"][2]["parts"]
    assert responses == [
        {"functionResponse": {"name": "get_weather", "response": {"result": "2C"}}},
        {"functionResponse": {"name": "get_weather", "response": {"result": "25C"}}},
    ]
    assert body["toolConfig"] == {
        "functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}
    }
    config = body["generationConfig"]
    assert config == {
        "maxOutputTokens": 32000,
        "temperature": 0.2,
        "topP": 0.9,
        "stopSequences": ["END"],
    }


@pytest.mark.parametrize("upstream", ["chat", "anthropic", "gemini"])
def test_codex_responses_request_translates(upstream: Any) -> None:
    call = translator_for("responses", upstream).request(
        json.loads(json.dumps(CODEX_RESPONSES)), "m"
    )
    body = call.body
    text = json.dumps(body)
    assert "gAAAAB" not in text  # OpenAI's encrypted reasoning never leaves for another family
    for dropped in ("store", "prompt_cache_key", "include", "instructions", "input"):
        assert dropped not in body
    if upstream == "chat":
        assert body["messages"][0] == {
            "role": "system",
            "content": "You are Codex.\n\nSandbox: read-only.",
        }
        assert body["messages"][2]["tool_calls"][0]["id"] == "call_ls"
        assert body["messages"][3] == {
            "role": "tool",
            "tool_call_id": "call_ls",
            "content": "a.py\nb.py",
        }
        assert body["response_format"] == {
            "type": "json_schema",
            "json_schema": {"name": "files", "schema": {"type": "object"}, "strict": True},
        }
        assert body["reasoning_effort"] == "medium"
        assert body["parallel_tool_calls"] is False
        assert body["max_tokens"] == 4000
    elif upstream == "anthropic":
        assert body["system"] == "You are Codex.\n\nSandbox: read-only."
        assert body["messages"][1]["content"][0]["id"] == "call_ls"
        assert body["messages"][2]["content"][0]["tool_use_id"] == "call_ls"
        assert body["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
        assert body["thinking"] == {"type": "enabled", "budget_tokens": 8192}
        assert body["max_tokens"] > 8192  # room for the thinking budget and the answer
        assert body["output_config"] == {
            "format": {"type": "json_schema", "schema": {"type": "object"}}
        }
    else:
        assert validate(body) == []
        assert body["contents"][2]["parts"][0]["functionResponse"]["name"] == "shell"
        config = body["generationConfig"]
        assert config["responseMimeType"] == "application/json"
        assert config["responseJsonSchema"] == {"type": "object"}
        assert config["thinkingConfig"] == {"includeThoughts": True, "thinkingBudget": 8192}


def test_anthropic_thinking_turns_off_temperature_and_keeps_budget_below_max() -> None:
    body = {
        "model": "x",
        "max_tokens": 1000,
        "temperature": 0.5,
        "messages": [{"role": "user", "content": "hi"}],
    }
    out = translator_for("chat", "anthropic").request(body | {"reasoning_effort": "high"}, "c").body
    assert out["thinking"]["budget_tokens"] < out["max_tokens"]
    assert "temperature" not in out  # Anthropic refuses temperature with thinking
    plain = translator_for("chat", "anthropic").request(body, "c").body
    assert plain["temperature"] == 0.5 and "thinking" not in plain


@pytest.mark.parametrize(
    ("client", "body", "needle"),
    [
        (
            "anthropic",
            {"messages": [], "tools": [{"type": "web_search_20250305", "name": "web_search"}]},
            "web_search_20250305",
        ),
        (
            "anthropic",
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "document",
                                "source": {
                                    "type": "base64",
                                    "media_type": "application/pdf",
                                    "data": "x",
                                },
                            }
                        ],
                    }
                ]
            },
            "document",
        ),
        ("responses", {"input": "hi", "previous_response_id": "resp_1"}, "previous_response_id"),
        (
            "responses",
            {
                "input": "hi",
                "tools": [{"type": "web_search"}],
                "tool_choice": {"type": "web_search"},
            },
            "web_search",
        ),
        ("responses", {"input": "hi", "tools": [{"type": "mcp", "server_label": "x"}]}, "mcp"),
        ("chat", {"messages": [{"role": "user", "content": "hi"}], "n": 2}, "n > 1"),
        ("chat", {"messages": [], "web_search_options": {}}, "web_search_options"),
    ],
)
def test_features_that_matter_and_cannot_cross_raise_untranslatable(
    client: Any, body: dict[str, Any], needle: str
) -> None:
    upstream = "gemini"
    with pytest.raises(Untranslatable, match=needle.replace(">", ".")):
        translator_for(client, upstream).request(body, "m")


def test_an_offered_hosted_tool_is_dropped_not_refused() -> None:
    """Codex offers web_search on every request: another family answers without it."""
    tools = [{"type": "web_search"}, {"type": "function", "name": "shell", "parameters": {}}]
    out = translator_for("responses", "anthropic").request({"input": "hi", "tools": tools}, "c")
    assert isinstance(out.body, dict)
    assert [t["name"] for t in out.body["tools"]] == ["shell"]


@pytest.mark.parametrize(
    ("client", "body"),
    [
        ("anthropic", {"messages": "hi"}),
        ("chat", {"messages": [{"role": "wizard", "content": "x"}]}),
        ("responses", {"input": 5}),
        (
            "chat",
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image_url", "image_url": {"url": "data:image/png,abc"}}
                        ],
                    }
                ]
            },
        ),
    ],
)
def test_malformed_client_bodies_are_bad_requests(client: Any, body: dict[str, Any]) -> None:
    with pytest.raises(BadRequest):
        translator_for(client, "gemini").request(body, "m")


def test_same_family_is_not_a_translation() -> None:
    with pytest.raises(ValueError, match="pass-through"):
        translator_for("chat", "chat")


@pytest.mark.parametrize(
    ("path", "api"),
    [
        ("/v1/messages", "anthropic"),
        ("/v1/messages?beta=true", "anthropic"),
        ("/api/paas/v4/chat/completions", "chat"),
        ("/v1/responses", "responses"),
        ("/v1/messages/count_tokens", None),
        ("/v1/models", None),
    ],
)
def test_client_api_for_path(path: str, api: str | None) -> None:
    assert client_api_for_path(path) == api


def test_call_ids_anthropic_refuses_are_rewritten_the_same_way_in_call_and_result() -> None:
    odd = "functions.get_weather:0"  # as some OpenAI-compatible servers (Kimi) give them
    body = {
        "model": "m",
        "messages": [
            {"role": "user", "content": "w?"},
            {
                "role": "assistant",
                "tool_calls": [
                    {
                        "id": odd,
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": "{}"},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": odd, "content": "sun"},
        ],
    }
    out = translator_for("chat", "anthropic").request(body, "c").body
    call = out["messages"][1]["content"][0]
    result = out["messages"][2]["content"][0]
    assert call["id"] == result["tool_use_id"] == "functions_get_weather_0"
