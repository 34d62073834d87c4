"""Exploration: the bandit policies, their serving core and off-policy evaluation.

The one registry of policy names (the bandit service serves them, the experiments schema and the
gateway name them): ``thompson`` (recstack/exploration/thompson.py) and the contextual policies
``linucb``, ``lints``, ``linucb-hybrid`` (recstack/exploration/linucb.py). Every policy follows the
``SlatePolicy`` contract of recstack/exploration/base.py; ``recstack.exploration.explorer.Explorer``
is the core the services call.
"""

from __future__ import annotations

THOMPSON = "thompson"
CONTEXTUAL_POLICIES = ("linucb", "lints", "linucb-hybrid")
POLICIES = (THOMPSON, *CONTEXTUAL_POLICIES)
