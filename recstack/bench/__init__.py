"""Benchmarks, one module each, every one returning a JSON-ready dict that ``recstack bench NAME``
renders: quality (models and pipeline per dataset), serve (the live stack against its transport
floor), stream (the Faust worker against a raw aiokafka ceiling, ``stream_raw``), retrieval (ANN
at catalogue scale), bandit (decision latency), diversity (MMR/DPP); ``doc`` renders
docs/benchmarks.md from the committed runs in bench/results/."""
