"""The feature stream: a Faust worker that turns user events into Redis features and bandit rewards.

Run it with `python -m services.feature_stream` or `recstack stream` (settings from the environment,
see settings.py).
"""
