"""What Gemini's `generateContent` refuses, checked the way Google's API checks it.

Google's JSON parser refuses any field it does not know (`Invalid JSON payload
received. Unknown name "x"`), so a translated body with one stray OpenAI or Anthropic
field fails for real; the fake must fail it too.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["validate"]

_TOP = {
    "contents",
    "systemInstruction",
    "tools",
    "toolConfig",
    "generationConfig",
    "safetySettings",
    "cachedContent",
    "labels",
}
_PART_DATA = {
    "text",
    "inlineData",
    "fileData",
    "functionCall",
    "functionResponse",
    "executableCode",
    "codeExecutionResult",
}
_PART = _PART_DATA | {"thought", "thoughtSignature", "videoMetadata", "mediaResolution"}
_GENERATION = {
    "temperature",
    "topP",
    "topK",
    "candidateCount",
    "maxOutputTokens",
    "stopSequences",
    "presencePenalty",
    "frequencyPenalty",
    "seed",
    "responseMimeType",
    "responseSchema",
    "responseJsonSchema",
    "responseModalities",
    "thinkingConfig",
    "responseLogprobs",
    "logprobs",
    "mediaResolution",
    "speechConfig",
}
_THINKING = {"thinkingBudget", "includeThoughts", "thinkingLevel"}
_TOOL = {
    "functionDeclarations",
    "googleSearch",
    "codeExecution",
    "urlContext",
    "googleSearchRetrieval",
    "fileSearch",
}
_DECLARATION = {
    "name",
    "description",
    "parameters",
    "parametersJsonSchema",
    "response",
    "responseJsonSchema",
    "behavior",
}
_MODES = {"AUTO", "ANY", "NONE", "VALIDATED", "MODE_UNSPECIFIED"}
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.:-]{0,127}")


def _unknown(where: str, value: Any, allowed: set[str]) -> list[str]:
    if not isinstance(value, dict):
        return [f"Invalid value at '{where}': expected an object"]
    return [
        f"Invalid JSON payload received. Unknown name \"{k}\" at '{where}': Cannot find field."
        for k in value
        if k not in allowed
    ]


def validate(body: Any, require_signatures: bool = False) -> list[str]:
    """What Gemini would refuse in `body` (empty when it would take it)."""
    if not isinstance(body, dict):
        return ["Invalid JSON payload received. Expected an object."]
    found = _unknown("", body, _TOP)
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        return [*found, "* GenerateContentRequest.contents: contents is not specified"]
    pending_calls = 0
    for i, content in enumerate(contents):
        where = f"contents[{i}]"
        found += _unknown(where, content, {"role", "parts"})
        role = content.get("role") if isinstance(content, dict) else None
        if role not in ("user", "model"):
            found.append(f"Please use a valid role: user, model. ({where}: {role!r})")
        parts = content.get("parts") if isinstance(content, dict) else None
        if not isinstance(parts, list) or not parts:
            found.append(
                f"* GenerateContentRequest.{where}.parts: contents.parts must not be empty."
            )
            continue
        calls = responses = 0
        for j, part in enumerate(parts):
            at = f"{where}.parts[{j}]"
            found += _unknown(at, part, _PART)
            data = [k for k in part if k in _PART_DATA] if isinstance(part, dict) else []
            if len(data) != 1:
                found.append(
                    f"* GenerateContentRequest.{at}.data: required oneof field 'data' must have one initialized field"
                )
                continue
            value = part[data[0]]
            if data[0] == "text" and not isinstance(value, str):
                found.append(f"Invalid value at '{at}.text'")
            elif data[0] == "functionCall":
                calls += 1
                found += _unknown(f"{at}.functionCall", value, {"id", "name", "args"})
                if require_signatures and calls == 1 and "thoughtSignature" not in part:
                    found.append(
                        "Function call is missing a thought_signature in functionCall parts."
                        f" This is required for tools to work correctly. ({at})"
                    )
            elif data[0] == "functionResponse":
                responses += 1
                found += _unknown(
                    f"{at}.functionResponse",
                    value,
                    {"id", "name", "response", "parts", "willContinue", "scheduling"},
                )
                if not isinstance(value.get("response"), dict):
                    found.append(f"* {at}.functionResponse.response: must be an object")
            elif data[0] == "inlineData":
                found += _unknown(f"{at}.inlineData", value, {"mimeType", "data"})
            elif data[0] == "fileData":
                found += _unknown(f"{at}.fileData", value, {"mimeType", "fileUri"})
        if pending_calls and responses != pending_calls:
            found.append(
                "Please ensure that the number of function response parts is equal to the"
                " number of function call parts of the function call turn."
            )
        if calls and role != "model":
            found.append(f"{where}: function calls must be in a model turn")
        pending_calls = calls
    system = body.get("systemInstruction")
    if system is not None:
        found += _unknown("system_instruction", system, {"role", "parts"})
    for i, tool in enumerate(body.get("tools") or []):
        found += _unknown(f"tools[{i}]", tool, _TOOL)
        for k, declaration in enumerate((tool or {}).get("functionDeclarations") or []):
            at = f"tools[{i}].function_declarations[{k}]"
            found += _unknown(at, declaration, _DECLARATION)
            if not _NAME.fullmatch(str(declaration.get("name", ""))):
                found.append(f"* GenerateContentRequest.{at}.name: Invalid function name.")
            if "parameters" in declaration and "parametersJsonSchema" in declaration:
                found.append(f"{at}: parameters and parametersJsonSchema are exclusive")
    calling = (body.get("toolConfig") or {}).get("functionCallingConfig")
    if calling is not None:
        found += _unknown(
            "tool_config.function_calling_config", calling, {"mode", "allowedFunctionNames"}
        )
        if calling.get("mode") not in _MODES:
            found.append(
                f"Invalid value at 'tool_config.function_calling_config.mode': {calling.get('mode')!r}"
            )
    config = body.get("generationConfig")
    if config is not None:
        found += _unknown("generation_config", config, _GENERATION)
        thinking = config.get("thinkingConfig") if isinstance(config, dict) else None
        if thinking is not None:
            found += _unknown("generation_config.thinking_config", thinking, _THINKING)
    return found
