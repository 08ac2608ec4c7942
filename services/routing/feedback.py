"""User feedback on an answer (``POST /v1/feedback``), turned into a routing label.

The router learns one thing: does a prompt need the strong tier? A rating says that
only about an answer of the router's cheap tier:

- cheap-tier answer rated bad  -> ``needs_strong=True`` (the cheap tier was not enough);
- cheap-tier answer rated good -> ``needs_strong=False``;
- an answer of any other tier (the strong one, a middle one, an escalated cascade) or of
  a model routing does not know: no label. A good strong answer does not say the cheap
  tier would have failed, and a bad one does not say it would have done better; the
  feedback is acknowledged with ``needs_strong: null`` and the reason.

A ``score`` in [0, 1] counts as good from 0.5 up. Every rating is stored in
``request_ratings`` (``good`` as 1, ``bad`` as 0), where experiments compare the arms'
mean rating. Rating the same request again replaces its earlier score and feedback
label. The request must be the caller's tenant's (else 404, as for a request that does
not exist) and have answered (else 409). Labels hold the prompt's text, which the store
keeps only with ``OPTENGINE_STORE_PROMPTS`` on: without it the rating is stored and no
label is recorded (a label without text cannot train), and the reply says so.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from models.tables import RequestLog, RequestRating
from services.errors import Conflict, NotFound
from services.routing.config import RoutingConfig
from services.routing.retrain import record_label, stored_prompt

SOURCE = "feedback"
Rating = Literal["good", "bad"]


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(min_length=1, max_length=64,
                            description="the X-Request-Id of the answer being rated")
    rating: Rating | None = None
    score: float | None = Field(default=None, ge=0, le=1, description="1 = perfect")

    @model_validator(mode="after")
    def _one_verdict(self) -> FeedbackRequest:
        if (self.rating is None) == (self.score is None):
            raise ValueError("give exactly one of rating ('good' or 'bad') and score (0 to 1)")
        return self

    @property
    def verdict(self) -> Rating:
        if self.rating is not None:
            return self.rating
        assert self.score is not None
        return "good" if self.score >= 0.5 else "bad"

    @property
    def value(self) -> float:
        """The rating as a score in [0, 1]: ``good`` is 1, ``bad`` 0."""
        return self.score if self.score is not None else float(self.rating == "good")


class FeedbackResult(BaseModel):
    object: Literal["feedback"] = "feedback"
    request_id: str
    rating: Rating
    score: float = Field(description="the score stored for the request (good 1, bad 0)")
    model: str = Field(description="the model that answered")
    needs_strong: bool | None = Field(description="the routing label recorded; null: none")
    detail: str


def record_feedback(engine: Engine, routing: RoutingConfig | None, feedback: FeedbackRequest,
                    *, tenant: str) -> FeedbackResult:
    """Look the request up in ``request_log`` and record the label its rating implies."""
    with Session(engine) as session:
        row = session.get(RequestLog, feedback.request_id)
    if row is None or row.tenant != tenant:
        raise NotFound(f"no request {feedback.request_id!r} for this tenant (its log row is "
                       "written within a second or so of the answer)", param="request_id")
    if row.status_code != 200 or row.model_served is None:
        raise Conflict(f"request {row.id!r} has no answer to rate (status {row.status_code})",
                       param="request_id")
    rating = feedback.verdict
    store_rating(engine, row.id, tenant, feedback.value)
    result = FeedbackResult(request_id=row.id, rating=rating, score=feedback.value,
                            model=row.model_served, needs_strong=None, detail="")
    model = routing.served_as(row.model_served) if routing is not None else None
    cheap_tier = routing.cheap_and_strong()[0] if routing is not None else None
    if model is None or model.tier != cheap_tier:
        result.detail = (f"no routing label: {row.model_served!r} is not a model of the "
                         f"router's cheap tier ({cheap_tier}), so the rating says nothing "
                         "about whether the cheap tier was enough")
        return result
    if row.prompt_text is None:
        result.detail = (f"no routing label: request {row.id!r} was logged without its "
                         "prompt (OPTENGINE_STORE_PROMPTS is off), so it cannot train")
        return result
    result.needs_strong = rating == "bad"
    record_label(engine, prompt_text=stored_prompt(row.prompt_text, row.endpoint),
                 needs_strong=result.needs_strong, source=SOURCE, request_id=row.id,
                 replace=True)
    result.detail = (f"routing label recorded: {model.name} ({model.tier}) was "
                     f"{'not ' if result.needs_strong else ''}enough for this prompt")
    return result


def store_rating(engine: Engine, request_id: str, tenant: str, score: float) -> None:
    """Write (or replace) the request's rating."""
    with Session(engine) as session, session.begin():
        row = session.get(RequestRating, request_id)
        if row is None:
            session.add(RequestRating(request_id=request_id, tenant=tenant, score=score))
        else:
            row.score, row.rated_at = score, datetime.now(UTC)
