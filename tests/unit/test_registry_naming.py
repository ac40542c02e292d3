"""Registry naming scheme, REF parsing and alias names (no MLflow store needed)."""

from __future__ import annotations

import pytest

from mtgraft.errors import MtgraftError
from mtgraft.registry import Ref, base_short_name, check_alias_name, model_name, parse_ref

H = "sha256:" + "0123456789abcdef" * 4


def test_model_name_scheme():
    assert model_name("sst2", "minilm", H) == "skill.sst2.minilm-01234567"
    assert model_name("sst2", "sentence-transformers/all-MiniLM-L6-v2", H) == "skill.sst2.all-minilm-l6-v2-01234567"
    assert model_name("SST 2", "/models/RoBERTa.base/", H) == "skill.sst-2.roberta-base-01234567"
    # a union patch of several tasks: sorted, joined by '--'
    assert model_name(["trec", "ag_news"], "minilm", H) == "skill.ag_news--trec.minilm-01234567"
    # bases with the same name but different content stay apart
    assert model_name("sst2", "minilm", "sha256:ffff" + "0" * 60) != model_name("sst2", "minilm", H)
    assert base_short_name("org/Model_X") == "model_x"


@pytest.mark.parametrize("ref, expected", [
    ("skill.sst2.minilm-01234567@best", Ref("skill.sst2.minilm-01234567", alias="best")),
    ("skill.sst2.minilm-01234567/3", Ref("skill.sst2.minilm-01234567", version="3")),
    ("models:/skill.x/007", Ref("skill.x", version="7")),
    ("models:/skill.x@latest", Ref("skill.x", alias="latest")),
    ("skill.x", Ref("skill.x")),
])
def test_parse_ref(ref, expected):
    got = parse_ref(ref)
    assert got == expected
    assert str(got) == str(expected)


@pytest.mark.parametrize("bad", ["", "@best", "skill.x@", "skill.x/abc", "skill.x/0", "a/b/3", "skill:x"])
def test_parse_ref_rejects_malformed(bad):
    with pytest.raises(MtgraftError):
        parse_ref(bad)


def test_alias_names():
    assert check_alias_name("prod-2") == "prod-2"
    for bad, msg in [("latest", "automatic"), ("LATEST", "automatic"), ("v3", "version"), ("a b", "invalid")]:
        with pytest.raises(MtgraftError, match=msg):
            check_alias_name(bad)
