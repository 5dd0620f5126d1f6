"""Build and store caches of an encoder's lower layers; the training side reads them from here.

Python API::

    from cache_builder import build_cache, ActivationCache, CacheInput
    cache = build_cache("caches/x", "bert-base-uncased", model, cut_layer=6,
                        splits={"train": CacheInput(input_ids=[[101, 7592, 102], ...]), ...})
    hidden = cache.split("train")[0]   # [len_0, hidden] in the storage dtype
"""

from cache_builder.build import CacheInput, build_cache, default_cache_dir, differing_fields, task_cache
from cache_builder.store import ActivationCache, CachedSplit

__all__ = ["ActivationCache", "CachedSplit", "CacheInput", "build_cache", "default_cache_dir",
           "differing_fields", "task_cache"]
