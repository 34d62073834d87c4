"""Reading the Prometheus text that a process serves on /metrics (``prometheus_client.parser``).

Samples are matched by their full sample name, as written in the text: a counter's
``..._total``, a histogram's ``..._bucket`` / ``..._count`` / ``..._sum``.
"""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def scrape(port: int, host: str = "127.0.0.1", timeout: float = 2.0) -> str:
    """The /metrics text of ``host:port`` ('' when it does not answer)."""
    try:
        return urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=timeout).read().decode()
    except OSError:
        return ""


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """(labels, value) of every sample named ``name``, in the order of the text."""
    return [
        (dict(s.labels), float(s.value))
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    ]


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of the sample of ``name`` with exactly these labels; None when absent."""
    for have, value in samples(text, name):
        if have == labels:
            return value
    return None
