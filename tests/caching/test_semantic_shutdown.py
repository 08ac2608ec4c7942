"""Shutting the gateway down writes the semantic-index entries its cache stage still has
queued, before the semantic cache and the store close; a write that fails is logged, and
one that hangs is given up after ``cache_semantic_close_timeout_s``: neither keeps the
gateway from stopping."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence

import httpx
import pytest

from models import create_store_engine
from services.caching.semantic import SemanticRow
from services.caching.semantic_store import SemanticStore
from tests.support.fake_openai import Answer, FakeOpenAI
from tests.support.gateway import RunningGateway

QUESTIONS = [
    "How do I reset my password?",
    "What is the capital of France?",
    "Which plan includes single sign-on?",
    "Where can I download my invoices?",
    "How long does shipping to Canada take?",
]


@pytest.fixture
def upstream() -> Iterator[FakeOpenAI]:
    server = FakeOpenAI({"m": Answer("Here is what to do.")}).start()
    yield server
    server.stop()


@pytest.fixture
def semantic_gateway(upstream, make_settings, start_gateway) -> Callable[..., RunningGateway]:
    def start(**overrides: object) -> RunningGateway:
        return start_gateway(make_settings(workers=[upstream.url],
                                           cache_semantic_tenants=["*"], **overrides))

    return start


def hold_index_writes(gateway: RunningGateway,
                      then: Callable[[Sequence[SemanticRow]], None]) -> threading.Event:
    """Make each of the gateway's semantic-index store writes wait for the returned event,
    then do ``then`` with its rows."""
    assert gateway.services.semantic_sync is not None
    store = gateway.services.semantic_sync.store  # the one the cache stage writes to
    release = threading.Event()

    def held(rows: Sequence[SemanticRow]) -> None:
        release.wait(timeout=60)
        then(rows)

    store.save_many = held  # type: ignore[method-assign]
    return release


def stored_questions(gateway: RunningGateway) -> list[str]:
    """The questions a new replica on the same store loads into its index."""
    engine = create_store_engine(gateway.settings.database_url)
    try:
        return sorted(row.text for row in SemanticStore(engine).rows_since(None))
    finally:
        engine.dispose()


def ask_every_question(gateway: RunningGateway) -> None:
    """Each answer is cached and queued for indexing; the first write is held, so the
    store has none of them yet."""
    for question in QUESTIONS:
        body = {"model": "m", "messages": [{"role": "user", "content": question}],
                "max_tokens": 8, "temperature": 0}
        response = httpx.post(f"{gateway.url}/v1/chat/completions", json=body, timeout=60)
        assert response.status_code == 200, response.text
        assert response.headers["x-cache"] == "MISS"
    assert stored_questions(gateway) == []


def stop_releasing_after(gateway: RunningGateway, release: threading.Event, delay_s: float
                         ) -> None:
    """Shut the gateway down, the held write released ``delay_s`` into the shutdown."""
    timer = threading.Timer(delay_s, release.set)
    timer.start()
    gateway.stop()
    timer.join()
    assert not gateway.running


def test_shutdown_writes_the_entries_still_queued_for_the_semantic_index(semantic_gateway
                                                                        ) -> None:
    gateway = semantic_gateway()
    store = gateway.services.semantic_sync.store
    release = hold_index_writes(gateway, store.save_many)
    ask_every_question(gateway)
    stop_releasing_after(gateway, release, 0.5)
    assert stored_questions(gateway) == sorted(QUESTIONS)


def test_a_failing_index_write_at_shutdown_is_logged_and_shutdown_goes_on(
    semantic_gateway, caplog: pytest.LogCaptureFixture
) -> None:
    gateway = semantic_gateway()

    def fail(rows: Sequence[SemanticRow]) -> None:
        raise RuntimeError("the store is down")

    release = hold_index_writes(gateway, fail)
    ask_every_question(gateway)
    stop_releasing_after(gateway, release, 0.5)
    failures = [r for r in caplog.records if r.getMessage() == "semantic indexing failed"]
    assert len(failures) == 2  # the held batch, then the four queued behind it
    assert all(r.exc_info and "the store is down" in str(r.exc_info[1]) for r in failures)
    assert stored_questions(gateway) == []


def test_a_hung_index_write_is_given_up_after_the_close_timeout(
    semantic_gateway, caplog: pytest.LogCaptureFixture
) -> None:
    gateway = semantic_gateway(cache_semantic_close_timeout_s=0.5)
    release = hold_index_writes(gateway, lambda rows: None)
    try:
        ask_every_question(gateway)
        gateway.stop()  # the write stays held through the whole shutdown
        assert not gateway.running
    finally:
        release.set()
    messages = [r.getMessage() for r in caplog.records if r.name.endswith("stages.cache")]
    assert messages == ["semantic index: 5 entries not written within 0.5 s at close; "
                        "dropped"]
