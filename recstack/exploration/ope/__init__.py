"""Off-policy evaluation (OPE) of bandit policies from logged feedback.

  data        ``LoggedBandit`` (one record per served impression and position), ``OPEError``
              and the log readers (recstack JSON lines, Open Bandit Dataset CSV)
  estimators  ``TargetPolicy`` and the estimators replay, IPS, SNIPS, DR with their intervals
  policies    target policies from a CLI spec (logged, uniform, best, json:PATH, softmax:TEMP)
  replay      replay of *learning* policies (LinUCB, LinTS, hybrid LinUCB, Thompson)
  runner      ``run_ope``, what ``recstack ope`` runs

Imports go one way: data <- estimators <- policies, replay <- runner.
"""
