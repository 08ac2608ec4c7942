"""OpenAI-compatible request and response bodies.

Every model allows extra fields: OpenAI adds fields often and vLLM has its own
(``ignore_eos``, ``top_k``, ...), and a gateway must pass them through untouched.
Fields follow the order of the OpenAI API reference; our own additions come after,
each with a description.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class OpenAIModel(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


# --- requests ---------------------------------------------------------------------------


class ChatMessage(OpenAIModel):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class StreamOptions(OpenAIModel):
    include_usage: bool | None = None


class SamplingParams(OpenAIModel):
    """Fields shared by chat and completions requests."""

    model: str = Field(min_length=1)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    logprobs: bool | int | None = None
    max_tokens: int | None = Field(default=None, ge=0)
    n: int | None = Field(default=None, ge=1, le=128)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    user: str | None = None

    @model_validator(mode="after")
    def _stream_options_need_stream(self) -> SamplingParams:
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed when stream is true")
        return self

    @property
    def wants_usage_in_stream(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(SamplingParams):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=0)
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)


class CompletionRequest(SamplingParams):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool | None = None
    suffix: str | None = None


# --- responses --------------------------------------------------------------------------


class PromptTokensDetails(OpenAIModel):
    cached_tokens: int | None = None
    cache_write_tokens: int | None = Field(
        default=None,
        description="prompt tokens written to the provider's prompt cache (Anthropic's "
        "cache_creation_input_tokens), billed above the input rate",
    )


class Usage(OpenAIModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: PromptTokensDetails | None = None

    @property
    def cached_tokens(self) -> int:
        details = self.prompt_tokens_details
        return (details.cached_tokens or 0) if details else 0

    @property
    def cache_write_tokens(self) -> int:
        details = self.prompt_tokens_details
        return (details.cache_write_tokens or 0) if details else 0


class ChatChoice(OpenAIModel):
    index: int
    message: dict[str, Any]
    finish_reason: str | None = None


class ChatCompletionResponse(OpenAIModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage | None = None


class CompletionChoice(OpenAIModel):
    index: int
    text: str
    finish_reason: str | None = None


class CompletionResponse(OpenAIModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class StreamChunk(OpenAIModel):
    """One SSE chunk of either endpoint; only what the gateway reads is typed."""

    id: str | None = None
    object: str | None = None
    model: str | None = None
    choices: list[dict[str, Any]] = Field(default_factory=list)
    usage: Usage | None = None


class ModelCard(OpenAIModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "optengine"


class ModelList(OpenAIModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
