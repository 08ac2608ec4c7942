"""Reading a batch input file: one request per JSONL line, each checked on its own.

A line must be a JSON object ``{custom_id, method: "POST", url, body}`` with ``url`` the
batch's endpoint and a ``body`` holding at least ``model``. A line that fails a check
does not fail the job: it becomes an error record (with its line number) in the batch's
error file, and every other line still runs. A ``custom_id`` seen on an earlier line is
such an error too, so outputs can always be matched back to their requests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import ValidationError

from services.protocol import ChatCompletionRequest, CompletionRequest, describe_invalid

ENDPOINTS = {"/v1/chat/completions": "chat.completions", "/v1/completions": "completions"}
_REQUEST_MODELS = {"/v1/chat/completions": ChatCompletionRequest,
                   "/v1/completions": CompletionRequest}
CUSTOM_ID_MAX = 512  # batch_results.custom_id


@dataclass(frozen=True, slots=True)
class BatchLine:
    line: int  # 1-based line number in the input file
    custom_id: str
    url: str
    body: dict[str, Any]

    @property
    def model(self) -> str:
        return str(self.body["model"])

    @property
    def endpoint(self) -> str:
        return ENDPOINTS[self.url]


@dataclass(frozen=True, slots=True)
class LineError:
    line: int
    custom_id: str | None
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class ParsedInput:
    lines: list[BatchLine]
    errors: list[LineError]

    @property
    def total(self) -> int:
        return len(self.lines) + len(self.errors)


def parse_input(content: bytes, *, endpoint: str) -> ParsedInput:
    """Split a JSONL file into valid requests and per-line errors (blank lines skipped)."""
    lines: list[BatchLine] = []
    errors: list[LineError] = []
    seen: set[str] = set()
    for number, raw in enumerate(content.splitlines(), start=1):
        if not raw.strip():
            continue
        checked = _check_line(number, raw, endpoint)
        if isinstance(checked, BatchLine) and checked.custom_id in seen:
            checked = LineError(number, checked.custom_id, "duplicate_custom_id",
                                f"line {number}: custom_id '{checked.custom_id}' is used by an "
                                "earlier line")
        if isinstance(checked, LineError):
            errors.append(checked)
        else:
            seen.add(checked.custom_id)
            lines.append(checked)
    return ParsedInput(lines, errors)


def _check_line(number: int, raw: bytes, endpoint: str) -> BatchLine | LineError:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return LineError(number, None, "invalid_json", f"line {number} is not valid JSON: {exc}")
    if not isinstance(data, dict):
        return LineError(number, None, "invalid_request", f"line {number} is not a JSON object")
    custom_id = data.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return LineError(number, None, "missing_custom_id",
                         f"line {number} has no custom_id (a non-empty string)")
    if len(custom_id) > CUSTOM_ID_MAX:
        return LineError(number, None, "invalid_custom_id",
                         f"line {number}: custom_id is longer than {CUSTOM_ID_MAX} characters")

    def error(code: str, message: str) -> LineError:
        return LineError(number, custom_id, code, f"line {number}: {message}")

    if data.get("method", "POST") != "POST":
        return error("invalid_method", "method must be POST")
    url = data.get("url")
    if url not in ENDPOINTS:
        return error("invalid_url", f"url must be one of {', '.join(sorted(ENDPOINTS))}")
    if url != endpoint:
        return error("mismatched_url", f"url {url} does not match the batch endpoint {endpoint}")
    body = data.get("body")
    if not isinstance(body, dict):
        return error("invalid_body", "body must be a JSON object")
    if not isinstance(body.get("model"), str) or not body["model"]:
        return error("missing_model", "body.model is required")
    if body.get("stream"):
        return error("invalid_body", "streaming is not supported in a batch")
    needed = "messages" if url == "/v1/chat/completions" else "prompt"
    if needed not in body:
        return error("invalid_body", f"body.{needed} is required for {url}")
    try:  # the checks a request to the gateway passes (bounded numbers and names)
        _REQUEST_MODELS[url].model_validate(body)
    except ValidationError as exc:
        return error("invalid_body", f"body.{describe_invalid(exc)[0]}")
    return BatchLine(number, custom_id, url, body)


def guess_endpoint(content: bytes) -> str:
    """The ``url`` of the first line that names a known one (for ``optengine batch run``)."""
    for raw in content.splitlines():
        try:
            url = orjson.loads(raw).get("url")
        except (orjson.JSONDecodeError, AttributeError):
            continue
        if url in ENDPOINTS:
            return str(url)
    raise ValueError("no line names an endpoint (/v1/chat/completions or /v1/completions)")
