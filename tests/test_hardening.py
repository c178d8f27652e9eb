"""Hardening of the library (issue 16): scheme parameters that would break detection are refused
where they are defined, and every key that validation lets through detects with finite results."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.calibration import SyntheticProxy
from provmark.detector import create_detector
from provmark.errors import ParameterError
from provmark.watermark.keys import create_key
from provmark.watermark.params import scheme_params
from provmark.watermark.schemes import SCHEMES, config_for, get_scheme


@pytest.mark.parametrize("scheme", ["kgw", "mpac"])
@pytest.mark.parametrize("gamma", [1e-320, 1e-10, 0.9999999999, float("nan"), float("inf"), True])
def test_degenerate_gammas_are_refused_with_a_message_naming_gamma(scheme, gamma):
    with pytest.raises(ParameterError, match=r"^gamma must "):
        config_for(scheme, {"gamma": gamma})


def test_kgw_gamma_says_it_needs_a_green_and_a_red_shard():
    with pytest.raises(ParameterError, match="at least one green and one red shard"):
        config_for("kgw", {"gamma": 1e-10})


@pytest.mark.parametrize("gamma,shards,green", [(1 / 64, 64, 1), (63 / 64, 64, 63), (0.5, 2, 1)])
def test_kgw_gammas_at_the_ends_of_the_range_keep_both_shard_kinds(gamma, shards, green):
    config = config_for("kgw", {"gamma": gamma})
    assert (config.shard_count, config.green_shards) == (shards, green)


@pytest.mark.parametrize("gamma", [1 / 64, 0.5])
def test_mpac_gammas_at_the_ends_of_the_range_are_accepted(gamma):
    assert config_for("mpac", {"gamma": gamma, "radix": 2}).shard_count == round(1 / gamma)


@pytest.mark.parametrize("scheme", ["kgw", "mpac", "majormark", "majormark+", "vanilla", "balance"])
@pytest.mark.parametrize("delta", [True, float("nan"), float("inf"), 0, -1, 1e308])
def test_degenerate_deltas_are_refused_for_every_scheme_that_biases(scheme, delta):
    with pytest.raises(ParameterError, match=r"^delta must "):
        config_for(scheme, {"delta": delta})


_ODD_VALUES = st.one_of(
    st.none(), st.booleans(), st.text(max_size=3), st.lists(st.integers(), max_size=2),
    st.floats(allow_nan=True, allow_infinity=True), st.integers(),
    st.sampled_from([1e-320, 1e-10, 0.9999999999, 1.0, 20.000001, 1 << 63, -(1 << 63), float("nan")]),
)


def _field_values(param) -> st.SearchStrategy:
    """Values for one parameter: mostly near its valid range (so many keys get built), sometimes odd."""
    defaults = sorted({default for _, default, _ in param.schemes if default is not None}, key=repr)
    if param.choices is not None:
        near = st.sampled_from([*param.choices, "bogus", ""])
    elif param.type is int:
        near = st.one_of(st.sampled_from(defaults + [1, 2, 4, 8, 16, 24, 32, 64]), st.integers(-2, 70),
                         st.sampled_from([128, 256, 4096, 8192, 131072, 131073]))
    else:
        near = st.one_of(st.sampled_from(defaults + [1 / 64, 1 / 3, 0.5, 63 / 64, 0.99]), st.floats(0, 1), st.floats(0, 60))
    return st.one_of(*[near] * 6, _ODD_VALUES)


def _param_dicts(scheme: str):
    params = {name: p for name, p in scheme_params().items() if any(s == scheme for s, _, _ in p.schemes)}
    optional = {name: _field_values(p) for name, p in params.items()}
    return st.fixed_dictionaries({}, optional=optional | {"bogus": _ODD_VALUES})


def _finite(result) -> bool:
    return (math.isfinite(result.score) and 0 <= result.p_value <= 1 and math.isfinite(result.log10_p_value)
            and result.num_scored_tokens >= 0)


_WORDS = "the quick brown fox jumps over a lazy dog while big old cars drive fast down empty roads".split()


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_arbitrary_parameters_are_refused_clearly_or_give_a_key_that_detects_finitely(scheme):
    entry = get_scheme(scheme)

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(params=_param_dicts(scheme), seed=st.integers(0, 2**32 - 1))
    def check(params, seed):
        try:
            key = create_key(scheme, params)
        except ParameterError as exc:
            message = str(exc)
            # A clear message names a parameter (or says the parameter is unknown) and is one line.
            assert "\n" not in message and any(name in message for name in [*params, "parameter"]), message
            return
        rng = random.Random(seed)
        detector = create_detector(key, proxy=SyntheticProxy(seed=seed % 1000) if entry.uses_proxy else None)
        if entry.reads_text:
            inputs = [" ".join(rng.choice(_WORDS) for _ in range(40)), ""]
        else:
            inputs = [[rng.randrange(49152) for _ in range(40)], [rng.randrange(49152)], []]
        for result in detector.detect_batch(inputs):
            assert _finite(result), (params, result)

    check()


# -- key files --------------------------------------------------------------------------------

def _key_file_mode(path) -> int:
    return path.lstat().st_mode & 0o777


def test_a_key_file_is_written_0600_and_an_existing_files_mode_does_not_carry_over(tmp_path):
    from provmark.watermark.keys import load_key, save_key

    path = tmp_path / "key.json"
    path.write_text("old")
    path.chmod(0o666)
    key = create_key("kgw")
    save_key(key, path, overwrite=True)
    assert _key_file_mode(path) == 0o600 and load_key(path).key_id == key.key_id
    assert [p.name for p in tmp_path.iterdir()] == ["key.json"]  # no temporary file left behind


def test_force_replaces_a_symlink_itself_and_never_writes_its_target(tmp_path):
    from provmark.watermark.keys import load_key, save_key

    target = tmp_path / "target"
    target.write_text("precious")
    target.chmod(0o644)
    link = tmp_path / "key.json"
    link.symlink_to(target)
    key = create_key("kgw")
    save_key(key, link, overwrite=True)
    assert target.read_text() == "precious" and _key_file_mode(target) == 0o644
    assert not link.is_symlink() and _key_file_mode(link) == 0o600 and load_key(link).key_id == key.key_id


def test_without_force_an_existing_file_or_dangling_symlink_is_refused_and_left_alone(tmp_path):
    from provmark.errors import KeyFileError
    from provmark.watermark.keys import save_key

    link = tmp_path / "key.json"
    link.symlink_to(tmp_path / "nowhere")
    with pytest.raises(KeyFileError, match="exists; choose another path or pass --force"):
        save_key(create_key("kgw"), link)
    assert link.is_symlink() and not (tmp_path / "nowhere").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key.json"]


def test_keys_create_with_force_through_the_cli_replaces_a_symlink_not_its_target(tmp_path):
    from click.testing import CliRunner

    from provmark.cli import cli

    target = tmp_path / "target"
    target.write_text("precious")
    link = tmp_path / "key.json"
    link.symlink_to(target)
    result = CliRunner().invoke(cli, ["keys", "create", "--scheme", "kgw", "--out", str(link), "--force"])
    assert result.exit_code == 0, result.output
    assert target.read_text() == "precious" and not link.is_symlink()


# -- the smaller items: a folder as text or key -----------------------------------------------

@pytest.mark.parametrize("args", [["detect", "--key", "{key}", "{dir}"], ["detect", "--key", "{dir}", "{text}"],
                                  ["embed", "--key", "{key}", "--text", "{dir}"]])
def test_a_folder_given_as_the_text_or_the_key_is_one_error_line(tmp_path, args):
    from click.testing import CliRunner

    from provmark.cli import cli
    from provmark.watermark.keys import save_key

    save_key(create_key("synonym"), tmp_path / "key.json")
    (tmp_path / "text.txt").write_text("some words here")
    folder = tmp_path / "folder"
    folder.mkdir()
    values = {"key": tmp_path / "key.json", "dir": folder, "text": tmp_path / "text.txt"}
    result = CliRunner().invoke(cli, [a.format(**values) for a in args])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    (line,) = result.output.strip().splitlines()
    assert line.startswith("Error: ") and f"{folder} is a folder" in line
