"""Video collections for search: index any folder of videos (or a dataset split), query it.

    from tempstop.collection import IndexSettings, index_videos, CollectionSearch
    from tempstop.config import IndexConfig
    from tempstop.inference import open_model
    loaded = open_model("models:/tempstop-unified@champion")
    settings = IndexSettings.for_model(loaded.model, IndexConfig())
    index_videos(loaded.model, "my_videos/", "my_index/", settings, loaded.identity)
    hits = CollectionSearch("my_index/", loaded.model, loaded.identity).search(["a dog catches a frisbee"], top_k=5)

Layout on disk: :mod:`tempstop.collection.manifest`. No side effects at import.
"""

from tempstop.collection.build import IndexSettings, index_store, index_videos
from tempstop.collection.manifest import CollectionError, read_manifest, resolve_index_dir
from tempstop.collection.query import MAX_TOP_K, CollectionSearch, Filters, open_collection

__all__ = [
    "MAX_TOP_K",
    "CollectionError",
    "CollectionSearch",
    "Filters",
    "IndexSettings",
    "index_store",
    "index_videos",
    "open_collection",
    "read_manifest",
    "resolve_index_dir",
]
