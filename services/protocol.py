"""OpenAI-compatible request and response bodies, shared by the gateway's routes and the
batch runner (a batch line's body is the same request).

Every model allows extra fields: OpenAI adds fields often and vLLM has its own
(``ignore_eos``, ``top_k``, ...), and a gateway must pass them through untouched.
Fields follow the order of the OpenAI API reference; our own additions come after,
each with a description.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

# What the platform can store and send: token counts fit request_log's 32-bit integer
# columns, and any number passed through must fit the 64 bits JSON encoders (and vLLM)
# accept. Larger values are a 400 at the edge, never a failure further in.
INT32_MAX = 2**31 - 1
_INT64_MIN, _UINT64_MAX = -(2**63), 2**64 - 1
TokenCount = Annotated[int, Field(ge=0, le=INT32_MAX)]
TokenId = Annotated[int, Field(ge=0, le=INT32_MAX)]
MODEL_NAME_MAX = 256  # request_log.model_requested


def _integers_fit(value: Any) -> bool:
    """Whether every integer in ``value`` (dicts, lists, models) fits in 64 bits; the
    fast check every request pays (plain loops, no paths: about 1 us per message)."""
    kind = type(value)
    if kind is str or kind is float or kind is bool or value is None:
        return True
    if kind is int:
        return _INT64_MIN <= value <= _UINT64_MAX
    if kind is dict:
        value = value.values()
    elif isinstance(value, BaseModel):
        if value.model_extra and not _integers_fit(value.model_extra):
            return False
        value = value.__dict__.values()
    elif kind is not list and kind is not tuple:
        return True
    for item in value:
        if type(item) is not str and item is not None and not _integers_fit(item):
            return False
    return True


def out_of_range_integer(value: Any, path: str = "") -> str | None:
    """The path of the first integer in ``value`` that does not fit in 64 bits, or None."""
    if _integers_fit(value):
        return None
    if isinstance(value, int):
        return path or "value"
    if isinstance(value, BaseModel):
        items = [*value.__dict__.items(), *(value.model_extra or {}).items()]
    elif isinstance(value, dict):
        items = list(value.items())
    else:
        items = list(enumerate(value))
    for key, item in items:
        found = out_of_range_integer(item, f"{path}.{key}" if path else str(key))
        if found is not None:
            return found
    return None  # pragma: no cover - _integers_fit said one is there


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

    model: str = Field(min_length=1, max_length=MODEL_NAME_MAX)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    logprobs: bool | Annotated[int, Field(ge=0, le=20)] | None = None
    max_tokens: TokenCount | None = None
    n: int | None = Field(default=None, ge=1, le=128)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    seed: int | None = Field(default=None, ge=_INT64_MIN, le=2**63 - 1)
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

    @model_validator(mode="after")
    def _integers_fit_64_bits(self) -> SamplingParams:
        # vendor fields, tools and content parts pass through untyped: check them once
        found = out_of_range_integer(self)
        if found is not None:
            raise ValueError(f"{found}: integer out of range (must fit in 64 bits)")
        return self

    @property
    def wants_usage_in_stream(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(SamplingParams):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: TokenCount | None = None
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)


class CompletionRequest(SamplingParams):
    prompt: str | list[str] | list[TokenId] | list[list[TokenId]]
    echo: bool | None = None
    suffix: str | None = None


def describe_invalid(exc: ValidationError) -> tuple[str, str | None]:
    """A request's validation failure as (message, param), for a 400 or a batch line
    error. ``param`` is None for failures of the body as a whole."""
    error = _most_telling(exc.errors())
    if error["type"] == "json_invalid":
        return f"could not parse the JSON body: {error['msg']}", None
    if error["type"] == "model_type" and not error["loc"]:
        return "request body must be a JSON object", None
    if error["type"] == "value_error":  # our own validators' messages, as written
        return str(error["ctx"]["error"]), None
    param = ".".join(str(p) for p in error["loc"] if not _is_union_tag(p)) or None
    return (f"{param}: {error['msg']}" if param else error["msg"]), param


def _most_telling(errors: list[Any]) -> Any:
    """A value of a union type (``prompt``) fails once per member; the error that says
    what is wrong is the one that is not a plain type mismatch."""
    return next((e for e in errors if not e["type"].endswith("_type")), errors[0])


def _is_union_tag(part: object) -> bool:
    """Pydantic names the union member in an error's location ('str', 'list[str]')."""
    return isinstance(part, str) and (part == "str" or "[" in part)


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
    description: str | None = Field(
        default=None, description="routed names: the quality target and how it is kept")


class ModelList(OpenAIModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
