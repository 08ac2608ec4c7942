"""Batch input checks: every bad line is reported with its number, the rest still run."""

from __future__ import annotations

import orjson

from services.batch import parse_input
from services.batch.dispatch import plan
from services.batch.predictor import length_bin


def request(custom_id: str, url: str = "/v1/completions", **body: object) -> bytes:
    return orjson.dumps({"custom_id": custom_id, "method": "POST", "url": url,
                         "body": {"model": "m", "prompt": "hi", **body}})


def test_bad_lines_become_per_line_errors() -> None:
    content = b"\n".join([
        request("a"),
        b"{not json",
        b"[1, 2]",
        orjson.dumps({"method": "POST", "url": "/v1/completions", "body": {"model": "m"}}),
        request("a"),  # duplicate custom_id
        request("b", url="/v1/embeddings"),
        request("c", url="/v1/chat/completions"),  # not the batch's endpoint
        orjson.dumps({"custom_id": "d", "method": "GET", "url": "/v1/completions", "body": {}}),
        orjson.dumps({"custom_id": "e", "url": "/v1/completions", "body": {"prompt": "x"}}),
        request("f", stream=True),
        b"",
        request("g"),
    ])
    parsed = parse_input(content, endpoint="/v1/completions")
    assert [line.custom_id for line in parsed.lines] == ["a", "g"]
    assert [line.line for line in parsed.lines] == [1, 12]
    assert {(e.line, e.code) for e in parsed.errors} == {
        (2, "invalid_json"), (3, "invalid_request"), (4, "missing_custom_id"),
        (5, "duplicate_custom_id"), (6, "invalid_url"), (7, "mismatched_url"),
        (8, "invalid_method"), (9, "missing_model"), (10, "invalid_body"),
    }
    assert all(f"line {e.line}" in e.message for e in parsed.errors)
    assert parsed.total == 11  # the blank line is not a request


def test_lines_the_store_could_not_record_are_line_errors() -> None:
    """Bounded like a request to the gateway: a line's request_log row must always fit,
    or the checkpoint holding it would fail forever."""
    content = b"\n".join([
        request("a", max_tokens=3_000_000_000),
        request("b", prompt=[1, 2, 10**12]),
        request("c", model="m" * 300),
        request("x" * 600),
        request("ok", max_tokens=16),
    ])
    parsed = parse_input(content, endpoint="/v1/completions")
    assert [line.custom_id for line in parsed.lines] == ["ok"]
    assert {(e.line, e.code) for e in parsed.errors} == {
        (1, "invalid_body"), (2, "invalid_body"), (3, "invalid_body"), (4, "invalid_custom_id"),
    }
    messages = {e.line: e.message for e in parsed.errors}
    assert messages[1].startswith("line 1: body.max_tokens: Input should be less than")
    assert messages[2].startswith("line 2: body.prompt.2:")


def test_chat_lines_need_messages() -> None:
    line = orjson.dumps({"custom_id": "x", "method": "POST", "url": "/v1/chat/completions",
                         "body": {"model": "m"}})
    parsed = parse_input(line, endpoint="/v1/chat/completions")
    assert parsed.errors[0].message == "line 1: body.messages is required for /v1/chat/completions"


def test_power_of_two_bins_and_longest_first_order() -> None:
    assert [length_bin(n) for n in (1, 2, 3, 4, 5, 8, 9, 64, 65)] == [0, 1, 2, 2, 3, 3, 4, 6, 7]
    lines = parse_input(b"\n".join(request(str(i)) for i in range(5)),
                        endpoint="/v1/completions").lines
    order = plan(lines, [10, 100, 12, 100, 3])
    assert [p.line.custom_id for p in order] == ["1", "3", "0", "2", "4"]
