"""The KV cache that the prefix-reusing paths fill once and reuse, and the check that it was filled.

Every fast path here (extraction, A/B scoring, generation, OOD rubrics, insertion search) runs a shared
prefix once into a transformers ``DynamicCache`` through the bridge, then runs only the suffixes on it.
If the cache comes back empty the suffixes silently attend to nothing before them and every number is
wrong without an error. That happened with transformers 5.24 under TransformerLens 4.3 (the bridge's
attention stopped writing the cache), so each prefix pass checks the cache's length before it is used.
"""

from typing import Any


def new_cache() -> Any:
    """An empty ``transformers.DynamicCache`` (imported here, lazily, like the rest of transformers)."""
    from transformers import DynamicCache

    return DynamicCache()


def require_filled(cache: Any, columns: int, where: str) -> None:
    """Raise unless ``cache`` holds ``columns`` positions after a pass over that many columns."""
    held = cache.get_seq_length()
    if held != columns:
        import transformers

        raise RuntimeError(
            f"{where}: the KV cache holds {held} positions after a pass over {columns}, so the reused "
            f"prefix would be lost and the results wrong. transformers {transformers.__version__} does not "
            "fill the cache through TransformerLens's bridge; install the range in caa_lens's pyproject.toml "
            "(transformers<5.19)."
        )
