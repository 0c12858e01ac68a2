"""Fixtures of the SDK tests: the production-path stack (tests/support/production_stack.py) and fresh keys."""

from tests.support.production_stack import _prod_stack_of_module, new_key, prod_stack

__all__ = ["_prod_stack_of_module", "new_key", "prod_stack"]
