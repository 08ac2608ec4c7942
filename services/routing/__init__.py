"""Routing: model tiers, the complexity router, cascades and budgets.

The public surface: the router (``ComplexityRouter``), the config (``RoutingConfig``,
``RoutingConfigError``), model choice (``RoutingPolicy``), budgets (``BudgetLedger``,
``BudgetExceeded``), the cascade's answer judge (``AnswerJudge``, with the heuristic
``score_answer``) and the novelty check (``NoveltyDetector``). Training lives in
``services.routing.train``, retraining from the store in ``services.routing.retrain`` and
the labels users' ratings give in ``services.routing.feedback``.
"""

from services.routing.budgets import BudgetExceeded, BudgetLedger
from services.routing.cascade import score_answer
from services.routing.config import RoutingConfig, RoutingConfigError
from services.routing.judge import AnswerJudge
from services.routing.novelty import NoveltyDetector
from services.routing.policy import RoutingPolicy
from services.routing.router import ComplexityRouter, RouterDecision

__all__ = [
    "AnswerJudge",
    "BudgetExceeded",
    "BudgetLedger",
    "ComplexityRouter",
    "NoveltyDetector",
    "RouterDecision",
    "RoutingConfig",
    "RoutingConfigError",
    "RoutingPolicy",
    "score_answer",
]
