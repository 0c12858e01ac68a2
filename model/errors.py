"""Errors raised by the model package; the worker maps them to job error codes."""

from __future__ import annotations


class ModelError(Exception):
    """Base class of the model package's errors."""


class CheckpointError(ModelError):
    """A checkpoint is missing, corrupt, unsafe or does not match the configuration; the message says which."""
