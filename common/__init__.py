"""Shared code of the medical foundation-model bundles.

``import common`` makes every subpackage reachable (``common.networks``, ``common.transforms``, ...), so
bundle configs need a single ``"$import common"``.
"""

from . import bundle, data, engines, evaluation, losses, networks, ssl, transforms

__all__ = ["bundle", "data", "engines", "evaluation", "losses", "networks", "ssl", "transforms"]
