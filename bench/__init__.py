"""Benchmark harness for txfanout: ``python -m bench run --scenario steady``.

Everything runs on 127.0.0.1: an nginx partner, the gateways under test
(txfanout and the reference gateways) and a distribution load generator
(wrk, ab, h2load). See bench/README.md.
"""
