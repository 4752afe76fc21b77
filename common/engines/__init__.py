"""Ignite engine helpers shared by every bundle's workflow."""

from .handlers import ProgressBar

__all__ = ["ProgressBar"]
