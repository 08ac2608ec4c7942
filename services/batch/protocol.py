"""OpenAI's file and batch objects, as ``/v1/files`` and ``/v1/batches`` return them."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from models import Batch, StoredFile


class OpenAIModel(BaseModel):
    model_config = ConfigDict(extra="allow")


def _ts(value: datetime | None) -> int | None:
    return int(value.timestamp()) if value is not None else None


class FileObject(OpenAIModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: Literal["processed"] = "processed"

    @classmethod
    def of(cls, stored: StoredFile) -> FileObject:
        return cls(id=stored.id, bytes=stored.bytes, created_at=_ts(stored.created_at) or 0,
                   filename=stored.filename, purpose=stored.purpose)


class FileList(OpenAIModel):
    object: Literal["list"] = "list"
    data: list[FileObject]


class BatchCreate(OpenAIModel):
    input_file_id: str = Field(min_length=1)
    endpoint: str
    completion_window: str = "24h"
    metadata: dict[str, str] | None = None


class RequestCounts(OpenAIModel):
    total: int
    completed: int
    failed: int


class BatchErrors(OpenAIModel):
    object: Literal["list"] = "list"
    data: list[dict[str, Any]]


class BatchObject(OpenAIModel):
    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    errors: BatchErrors | None = None
    input_file_id: str
    completion_window: str
    status: str
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: int
    in_progress_at: int | None = None
    expires_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: RequestCounts
    metadata: dict[str, str] | None = None

    @classmethod
    def of(cls, batch: Batch) -> BatchObject:
        return cls(
            id=batch.id, endpoint=batch.endpoint,
            errors=BatchErrors(data=batch.errors) if batch.errors else None,
            input_file_id=batch.input_file_id, completion_window=batch.completion_window,
            status=batch.status, output_file_id=batch.output_file_id,
            error_file_id=batch.error_file_id, created_at=_ts(batch.created_at) or 0,
            in_progress_at=_ts(batch.in_progress_at), expires_at=_ts(batch.expires_at),
            finalizing_at=_ts(batch.finalizing_at), completed_at=_ts(batch.completed_at),
            failed_at=_ts(batch.failed_at), expired_at=_ts(batch.expired_at),
            cancelling_at=_ts(batch.cancelling_at), cancelled_at=_ts(batch.cancelled_at),
            request_counts=RequestCounts(total=batch.total, completed=batch.completed,
                                         failed=batch.failed),
            metadata=batch.batch_metadata,
        )


class BatchList(OpenAIModel):
    object: Literal["list"] = "list"
    data: list[BatchObject]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False
