"""OpenAI-compatible ``/v1/files`` and ``/v1/batches``: parse, call, return."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from starlette.datastructures import UploadFile

from services.batch.protocol import BatchCreate, BatchList, BatchObject, FileList, FileObject
from services.errors import InvalidRequest
from services.gateway.deps import PrincipalDep, ServicesDep
from services.gateway.openapi import STORE_ERRORS, json_body
from services.gateway.routes.openai import parse_body, read_body

router = APIRouter(prefix="/v1")

_JSON_BODY_LIMIT = 64 * 1024
_MULTIPART_SLACK = 64 * 1024  # the multipart envelope around the file itself


@router.post("/files", responses=STORE_ERRORS)
async def upload_file(request: Request, services: ServicesDep,
                      principal: PrincipalDep) -> FileObject:
    batches = services.batches
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit():
        batches.check_size(int(declared) - _MULTIPART_SLACK)  # refuse before reading
    form = await request.form(max_files=1, max_fields=4)
    upload, purpose = form.get("file"), form.get("purpose")
    if not isinstance(upload, UploadFile):
        raise InvalidRequest("a multipart field 'file' with the JSONL file is required",
                             param="file")
    if not isinstance(purpose, str):
        raise InvalidRequest("a multipart field 'purpose' is required", param="purpose")
    batches.check_size(upload.size or 0)
    content = await upload.read()
    return await batches.upload(tenant=principal.tenant, filename=upload.filename or "upload",
                                purpose=purpose, content=content)


@router.get("/files", responses=STORE_ERRORS)
async def list_files(services: ServicesDep, principal: PrincipalDep,
                     limit: Annotated[int, Query(ge=1, le=10_000)] = 100) -> FileList:
    return await services.batches.files(tenant=principal.tenant, limit=limit)


@router.get("/files/{file_id}", responses=STORE_ERRORS)
async def get_file(file_id: str, services: ServicesDep, principal: PrincipalDep) -> FileObject:
    return await services.batches.file(file_id, tenant=principal.tenant)


@router.get("/files/{file_id}/content", responses=STORE_ERRORS)
async def file_content(file_id: str, services: ServicesDep, principal: PrincipalDep) -> Response:
    content = await services.batches.file_content(file_id, tenant=principal.tenant)
    return Response(content, media_type="application/jsonl")


@router.post("/batches", responses=STORE_ERRORS, openapi_extra=json_body(BatchCreate))
async def create_batch(request: Request, services: ServicesDep,
                       principal: PrincipalDep) -> BatchObject:
    body = parse_body(BatchCreate, await read_body(request, _JSON_BODY_LIMIT))
    return await services.batches.create(body, tenant=principal.tenant)


@router.get("/batches", responses=STORE_ERRORS)
async def list_batches(services: ServicesDep, principal: PrincipalDep,
                       limit: Annotated[int, Query(ge=1, le=100)] = 20,
                       after: str | None = None) -> BatchList:
    return await services.batches.list(tenant=principal.tenant, limit=limit, after=after)


@router.get("/batches/{batch_id}", responses=STORE_ERRORS)
async def get_batch(batch_id: str, services: ServicesDep, principal: PrincipalDep) -> BatchObject:
    return await services.batches.get(batch_id, tenant=principal.tenant)


@router.post("/batches/{batch_id}/cancel", responses=STORE_ERRORS)
async def cancel_batch(batch_id: str, services: ServicesDep,
                       principal: PrincipalDep) -> BatchObject:
    return await services.batches.cancel(batch_id, tenant=principal.tenant)
