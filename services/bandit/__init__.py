"""Exploration over the ranked slate: Thompson sampling with arm statistics from Redis."""
