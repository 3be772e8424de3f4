"""Tooling around the service, never imported by the worker.

- `tooling.embedded`: the real Kafka-compatible broker, Triton and Prometheus from PyPI, and a worker
  child process, each started and stopped by PID (the demo, the evaluators, the benchmark and the tests).
- `tooling.sample` and `tooling.replay`: real events (and broken ones) produced into the inputs, and
  the outputs read back and accounted for per event.
- `tooling.demo`: `python -m streams demo`.
- `tooling.recommend_eval`: the recommender's evaluation, offline and through the running service.
- `tooling.promtext` and `tooling.stats`: Prometheus text and percentiles, for every figure reported.
"""
