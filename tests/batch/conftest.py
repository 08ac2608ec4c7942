"""Batch tests share a store, a JSONL builder and the flow's environment."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import orjson
import pytest
from sqlalchemy import Engine

from migrations import upgrade_to_head
from models import create_store_engine
from services.batch import store
from services.settings import Settings


def jsonl(model: str, count: int, *, max_tokens: int = 8, bad: dict[int, bytes] | None = None,
          url: str = "/v1/completions") -> bytes:
    """``count`` requests (custom ids ``req-0``...), some lines replaced by ``bad``."""
    lines = []
    for i in range(count):
        body = {"model": model, "max_tokens": max_tokens, "ignore_eos": True,
                "temperature": 0}
        if url == "/v1/completions":
            body["prompt"] = f"request number {i}: " + "word " * (i % 17)
        else:
            body["messages"] = [{"role": "user", "content": f"request {i}"}]
        lines.append(orjson.dumps({"custom_id": f"req-{i}", "method": "POST", "url": url,
                                   "body": body}))
    for index, raw in (bad or {}).items():
        lines.insert(index, raw)
    return b"\n".join(lines) + b"\n"


@dataclass
class BatchStore:
    settings: Settings
    engine: Engine

    def submit(self, content: bytes, *, tenant: str = "default", window: str = "24h",
               endpoint: str = "/v1/completions") -> str:
        stored = store.create_file(self.engine, tenant=tenant, filename="in.jsonl",
                                   purpose="batch", content=content)
        return store.create_batch(self.engine, tenant=tenant, input_file_id=stored.id,
                                  endpoint=endpoint, completion_window=window).id

    def output(self, file_id: str | None) -> list[dict]:
        if file_id is None:
            return []
        content = store.get_file(self.engine, file_id, tenant="default").content
        return [orjson.loads(line) for line in content.splitlines()]


@pytest.fixture
def batch_store(
    vllm_worker, make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
):
    """A SQLite store and settings pointing at the shared vLLM worker; the flow (which
    reads its settings from the environment, in this process or a child) sees the same."""
    settings = make_settings(workers=[vllm_worker.base_url])
    upgrade_to_head(settings.database_url)
    monkeypatch.setenv("OPTENGINE_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("OPTENGINE_WORKERS", vllm_worker.base_url)
    monkeypatch.setenv("OPTENGINE_DATA_DIR", str(settings.data_dir))
    engine = create_store_engine(settings.database_url)
    yield BatchStore(settings, engine)
    engine.dispose()
