"""The committed PRF v1 golden file is reproduced exactly (see tests/goldens/README.md)."""

import json
from dataclasses import fields

import pytest

from provmark.watermark.balance import BalanceConfig, VanillaConfig
from provmark.watermark.kgw import KGWConfig
from provmark.watermark.majormark import MajorMarkConfig, MajorMarkPlusConfig
from provmark.watermark.mpac import MPACConfig
from provmark.watermark.synonym import SynonymConfig
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


@pytest.mark.parametrize("section", ["mix32", "context_seeds", "token_words", "preferred_masks", "balanced_splits", "subkeys"])
def test_code_reproduces_golden_section(committed, current, section):
    assert current[section] == committed[section]


@pytest.mark.parametrize("scheme", ["kgw", "mpac", "majormark", "majormark+", "vanilla", "balance", "synonym"])
def test_code_reproduces_golden_scheme_cases(committed, current, scheme):
    assert len(current[scheme]) == len(committed[scheme])
    for now, then in zip(current[scheme], committed[scheme]):
        exact = {k: v for k, v in now.items() if k != "log10_p_value"}
        assert exact == {k: v for k, v in then.items() if k != "log10_p_value"}
        assert float.fromhex(now["log10_p_value"]) == pytest.approx(float.fromhex(then["log10_p_value"]), rel=1e-9)


def test_golden_file_has_exactly_the_sections_the_code_computes(committed, current):
    assert set(comparable(committed)) == set(current)


def test_wrong_key_does_not_reproduce_the_golden_seeds(committed):
    import torch

    from provmark.kernels.prf import context_seeds, split_key

    row = committed["context_seeds"][10]
    wrong = int(row["key"]) ^ 1
    seed = context_seeds(torch.tensor([split_key(wrong)]), torch.tensor([row["salt"]]),
                         torch.tensor([row["context"]], dtype=torch.int64).reshape(1, -1))
    assert int(seed[0]) != row["seed"]


@pytest.mark.parametrize(
    "scheme,config_class",
    [("kgw", KGWConfig), ("mpac", MPACConfig), ("majormark", MajorMarkConfig), ("majormark+", MajorMarkPlusConfig),
     ("vanilla", VanillaConfig), ("balance", BalanceConfig), ("synonym", SynonymConfig)],
)
def test_golden_cases_record_every_config_field(committed, scheme, config_class):
    # A new config field changes what a key means: the goldens must pin it too.
    for case in committed[scheme]:
        assert set(case["params"]) == {f.name for f in fields(config_class)}
