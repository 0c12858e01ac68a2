"""Fixtures of the SDK tests: the production-path stack (tests/support/production_stack.py) and fresh keys."""

from tests.support.production_stack import new_key, prod_stack

__all__ = ["new_key", "prod_stack"]
