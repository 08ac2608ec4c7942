"""The records of a batch's output and error files (OpenAI's batch output format).

Output file, one line per request that got a 200::

    {"id": "batch_req_...", "custom_id": "...", "response": {"status_code": 200,
     "request_id": "...", "body": {...}}, "error": null}

Error file, one line per request that did not: ``response`` holds the upstream's error
answer when there was one, ``error`` says what went wrong and on which input line.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from services.batch.dispatch import LineOutcome
from services.batch.lines import LineError


def request_id(batch_id: str, line: int) -> str:
    """Deterministic per (batch, line): a resumed run writes the same ids, never new ones."""
    return "br-" + hashlib.sha256(f"{batch_id}:{line}".encode()).hexdigest()[:32]


def _record(batch_id: str, line: int, custom_id: str | None, response: dict[str, Any] | None,
            error: dict[str, Any] | None) -> str:
    return orjson.dumps({
        "id": f"batch_req_{request_id(batch_id, line)[3:]}",
        "custom_id": custom_id,
        "response": response,
        "error": error,
    }).decode()


def outcome_record(batch_id: str, outcome: LineOutcome) -> str:
    response = {"status_code": outcome.status_code,
                "request_id": request_id(batch_id, outcome.line.line), "body": outcome.body}
    error = None
    if not outcome.ok:
        detail = outcome.body.get("error") or {}
        error = {"code": detail.get("code") or detail.get("type") or "request_failed",
                 "message": detail.get("message") or f"HTTP {outcome.status_code}",
                 "line": outcome.line.line}
    return _record(batch_id, outcome.line.line, outcome.line.custom_id, response, error)


def line_error_record(batch_id: str, error: LineError) -> str:
    return _record(batch_id, error.line, error.custom_id, None,
                   {"code": error.code, "message": error.message, "line": error.line})
