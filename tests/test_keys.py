"""Key files: creation, derivation, round trip and every malformed input."""

import json
import os
import re
import stat

import pytest

from provmark.errors import KeyFileError, ParameterError, UnknownSchemeError
from provmark.watermark.keys import create_key, derive_subkey, key_from_dict, load_key, save_key
from provmark.watermark.kgw import KGWConfig


def test_subkey_derivation_is_stable():
    # HMAC-SHA256(bytes(32), "provmark/prf-v1/kgw/shard")[:8], pinned.
    assert derive_subkey(bytes(32), "prf-v1", "kgw", "shard") == SUBKEY_VECTOR


def test_subkeys_differ_by_purpose_scheme_and_prf_version():
    secret = bytes(range(32))
    values = {derive_subkey(secret, v, s, p) for v in ("prf-v1", "prf-v2") for s in ("kgw", "mpac") for p in ("shard", "position")}
    assert len(values) == 8


def test_new_keys_have_random_secrets_and_ids_derived_from_them():
    a, b = create_key("kgw"), create_key("kgw")
    assert len(a.secret) == 32 and a.secret != b.secret and a.key_id != b.key_id
    assert create_key("kgw", secret=a.secret).key_id == a.key_id


def test_repr_never_shows_the_secret():
    key = create_key("kgw")
    assert key.secret.hex() not in repr(key) and "secret" not in repr(key)


def test_key_file_round_trip_and_owner_only_permissions(tmp_path):
    key = create_key("kgw", {"gamma": 0.5, "delta": 1.5, "context_width": 3})
    path = tmp_path / "key.json"
    save_key(key, path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    loaded = load_key(path)
    assert loaded == key
    assert loaded.config == KGWConfig(gamma=0.5, delta=1.5, context_width=3)


def test_saving_over_an_existing_file_needs_overwrite(tmp_path):
    path = tmp_path / "key.json"
    save_key(create_key("kgw"), path)
    with pytest.raises(KeyFileError, match="exists"):
        save_key(create_key("kgw"), path)
    save_key(create_key("kgw"), path, overwrite=True)


@pytest.mark.parametrize(
    "params,message",
    [
        ({"gamma": 0}, "gamma must be a number in \\(0, 1\\)"),
        ({"gamma": 1.5}, "gamma must be a number in \\(0, 1\\)"),
        ({"gamma": 0.123456}, "gamma must be a fraction k/S"),
        ({"delta": -1}, "delta must be a number in \\(0, 20\\]"),
        ({"delta": float("nan")}, "delta must be"),
        ({"context_width": 0}, "context_width must be an integer in \\[1, 16\\]"),
        ({"context_width": 2.5}, "context_width must be"),
        ({"bits": 32}, "unknown parameter\\(s\\) for kgw: bits"),
    ],
)
def test_out_of_range_parameters_are_refused_with_the_parameter_named(params, message):
    with pytest.raises(ParameterError, match=message):
        create_key("kgw", params)


def test_unknown_scheme_is_refused():
    with pytest.raises(UnknownSchemeError, match=re.escape("unknown scheme 'nope'; known schemes: balance, kgw, majormark, majormark+, mpac, synonym, vanilla")):
        create_key("nope")


def _valid():
    return create_key("kgw").to_dict()


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda d: d.pop("secret"), "lacks field\\(s\\): secret"),
        (lambda d: d.update(format="other"), "not a provmark key"),
        (lambda d: d.update(secret="zz"), "hex string"),
        (lambda d: d.update(secret="00" * 16), "32 bytes"),
        (lambda d: d.update(prf_version="prf-v0"), "this provmark implements 'prf-v1'"),
        (lambda d: d.update(scheme="nope"), "unknown scheme"),
        (lambda d: d.update(params=[1]), "params must be a JSON object"),
        (lambda d: d["params"].update(gamma=7), "gamma must be"),
        (lambda d: d.update(key_id="k_0000000000000000"), "does not match the secret"),
    ],
)
def test_malformed_key_dicts_raise_key_file_errors(mutate, message):
    data = _valid()
    mutate(data)
    with pytest.raises(KeyFileError, match=message):
        key_from_dict(data)


def test_missing_and_non_json_key_files_raise_key_file_errors(tmp_path):
    with pytest.raises(KeyFileError, match="key file not found"):
        load_key(tmp_path / "absent.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(KeyFileError, match="not valid JSON"):
        load_key(bad)
    bad.write_text(json.dumps([1, 2]))
    with pytest.raises(KeyFileError, match="JSON object"):
        load_key(bad)


SUBKEY_VECTOR = 15891471258858688156
