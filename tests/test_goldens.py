"""The committed PRF v1 golden file is reproduced exactly (see tests/goldens/README.md)."""

import json
from dataclasses import fields

import pytest

from provmark.watermark.kgw import KGWConfig
from tests.goldens.generate import GOLDEN, comparable, compute


@pytest.fixture(scope="module")
def committed():
    return json.loads(GOLDEN.read_text())


@pytest.fixture(scope="module")
def current():
    return compute()


def test_golden_file_has_schema_and_prf_version(committed):
    assert committed["schema_version"] == 1
    assert committed["prf_version"] == "prf-v1"


@pytest.mark.parametrize("section", ["mix32", "context_seeds", "token_words", "preferred_masks", "subkeys"])
def test_code_reproduces_golden_section(committed, current, section):
    assert current[section] == committed[section]


def test_golden_file_holds_nothing_the_code_does_not_compute(committed, current):
    assert comparable(committed) == current


def test_wrong_key_does_not_reproduce_the_golden_seeds(committed):
    import torch

    from provmark.kernels.prf import context_seeds, split_key

    row = committed["context_seeds"][10]
    wrong = int(row["key"]) ^ 1
    seed = context_seeds(torch.tensor([split_key(wrong)]), torch.tensor([row["salt"]]),
                         torch.tensor([row["context"]], dtype=torch.int64).reshape(1, -1))
    assert int(seed[0]) != row["seed"]


def test_golden_shard_cases_cover_every_kgw_config_field_through_the_core():
    # The shared core's inputs are what every config field becomes: if KGW grows a field that
    # does not map onto (key, salt, context, shard count, mask, delta), the goldens miss it.
    assert {f.name for f in fields(KGWConfig)} == {"gamma", "delta", "context_width"}
