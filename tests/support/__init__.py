"""Helpers shared by the test packages: plain functions and classes, no fixtures.

Fixtures live in the `conftest.py` files and build on these modules; test modules import helpers from here,
never from a `conftest.py`. One module per topic: `api` (request bodies, broker queues), `storage` (stores on
both backends), `jobs` (jobs as the API makes them), `waiting` (polling on states), `workers` (model-worker
processes), `webhooks` (receiver, clock, the one signature verifier), `stack` (`unipic up`).
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
