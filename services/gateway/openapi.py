"""What the OpenAPI schema says of routes that read their own bodies (to bound their
size before parsing) and of the failures that are not the gateway's: the documented
5xx answers. API fuzzing (tests/gateway/test_api_fuzzing.py) holds the gateway to it:
no 5xx but these."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

_ERROR = {"description": "OpenAI error body: {error: {message, type, param, code}}"}
UPSTREAM_ERRORS: dict[int | str, dict[str, Any]] = {
    502: {**_ERROR, "description": "the upstream failed (upstream_error)"},
    503: {**_ERROR, "description": "no upstream can take it (service_unavailable: "
          "overloaded, no healthy worker) or the budgets' Redis is down "
          "(budget_unavailable); Retry-After"},
    504: {**_ERROR, "description": "the upstream timed out (timeout)"},
}
STORE_ERRORS: dict[int | str, dict[str, Any]] = {
    503: {**_ERROR, "description": "the metrics store is down (store_unavailable); "
          "Retry-After"},
}


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` declaring ``model`` as the route's JSON body, its references
    inlined (the route parses the body itself, so FastAPI does not list it)."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return inline(defs[ref.rsplit("/", 1)[1]])
            return {key: inline(value) for key, value in node.items()}
        if isinstance(node, list):
            return [inline(value) for value in node]
        return node

    return {"requestBody": {"required": True,
                            "content": {"application/json": {"schema": inline(schema)}}}}
