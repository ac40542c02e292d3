"""Task catalog, data sources (pinned package files, the hub, local files) and k-shot splits.

Typical use::

    from mtgraft.tasks import get_task, make_splits
    spec = get_task("rotten_tomatoes")
    splits = make_splits(spec, k=64, seed=13, max_test=2000)  # 2000 = the default cap, max_test: auto
"""

from mtgraft.tasks.data import (
    cached_stats,
    compatible,
    fetch,
    get_task,
    is_cached,
    list_tasks,
    load_examples,
    make_splits,
    task_stats,
)
from mtgraft.tasks.spec import (
    Example,
    HubSource,
    LocalSource,
    PackageSource,
    Splits,
    TaskSpec,
)

__all__ = [
    "Example",
    "HubSource",
    "LocalSource",
    "PackageSource",
    "Splits",
    "TaskSpec",
    "cached_stats",
    "compatible",
    "fetch",
    "get_task",
    "is_cached",
    "list_tasks",
    "load_examples",
    "make_splits",
    "task_stats",
]
