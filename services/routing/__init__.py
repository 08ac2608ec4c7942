"""Routing: model tiers, the complexity router, cascades and budgets.

Public surface: ``ComplexityRouter`` (the shipped prompt-complexity model) and
``RouterDecision``; the rest of the package is reached through the names added below.
"""

from services.routing.router import ComplexityRouter, RouterDecision

__all__ = ["ComplexityRouter", "RouterDecision"]
