"""Video collections for search: index any folder of videos (or a dataset split), query it.

    from tempstop.collection import IndexSettings, index_videos, CollectionSearch
    index_videos(model, "my_videos/", "my_index/", IndexSettings(frames=12, size=224), info)
    hits = CollectionSearch("my_index/", model, info).search(["a dog catches a frisbee"], top_k=5)

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
