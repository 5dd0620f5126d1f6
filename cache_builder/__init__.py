"""Build and store caches of an encoder's lower layers; the training side reads them from here.

Python API::

    from cache_builder import build_cache, ActivationCache, SplitInput
    cache = build_cache("caches/x", "bert-base-uncased", cut_layer=6, splits={...})
    hidden, label = cache.split("train")[0]
"""

from cache_builder.build import SplitInput, build_cache, default_cache_dir, differing_fields
from cache_builder.store import ActivationCache, CachedSplit

__all__ = ["ActivationCache", "CachedSplit", "SplitInput", "build_cache", "default_cache_dir",
           "differing_fields"]
