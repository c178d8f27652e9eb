"""provmark scan: corpus formats, verdicts and payloads per text, resuming, records of a registry
tenant, and the same table from the local and the Ray engine."""

import json
import os

import pyarrow as pa
import pyarrow.csv
import pyarrow.parquet
import pytest
from click.testing import CliRunner

from provmark.cli import cli
from provmark.errors import ParameterError
from provmark.scan import SCAN_COLUMNS, ScanOptions, read_corpus, scan_corpus
from provmark.watermark.keys import create_key, save_key
from tests.sampled import plain_ids, watermarked_ids



def _watermarked(tokenizer, key, payload=None, *, tokens=120, seed=0) -> str:
    """Text decoded from ids sampled from uniform logits through the key's processor."""
    return tokenizer.decode(watermarked_ids(key, payload, tokens=tokens, seed=seed))


def _plain(tokenizer, *, tokens=120, seed=1) -> str:
    return tokenizer.decode(plain_ids(tokens=tokens, seed=seed))


@pytest.fixture(scope="module")
def corpus(tokenizer):
    """12 texts: 4 under an 8-bit MPAC key (payloads 3, 77, 200, 9), 4 plain, 2 too short, 2 empty-ish."""
    key = create_key("mpac", {"bits": 8, "delta": 4.0})
    payloads = {"m0": 3, "m1": 77, "m2": 200, "m3": 9}
    rows = []
    for index, (name, payload) in enumerate(payloads.items()):
        rows.append({"id": name, "text": _watermarked(tokenizer, key, payload, seed=index)})
        rows.append({"id": f"p{index}", "text": _plain(tokenizer, seed=100 + index)})
    rows += [{"id": "short0", "text": "Hi."}, {"id": "short1", "text": "Yes"}, {"id": "blank0", "text": "   "},
             {"id": "blank1", "text": ""}]
    return key, payloads, rows


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _scan(corpus_path, out, key, **options):
    return scan_corpus(read_corpus(corpus_path), out, [key], ScanOptions(progress=False, min_tokens=10, **options))


def test_the_local_engine_finds_each_watermark_and_its_payload_and_no_plain_text(tmp_path, corpus):
    key, payloads, rows = corpus
    summary = _scan(_write_jsonl(tmp_path / "c.jsonl", rows), tmp_path / "out.parquet", key, workers=2, batch_size=3)
    table = pa.parquet.read_table(tmp_path / "out.parquet")
    assert table.column_names == list(SCAN_COLUMNS)
    out = {r["id"]: r for r in table.to_pylist()}
    assert list(out) == [r["id"] for r in rows]  # input order
    for name, payload in payloads.items():
        assert (out[name]["verdict"], out[name]["payload"], out[name]["key_id"]) == ("watermarked", payload, key.key_id)
        assert out[name]["p_value"] < 1e-6 and out[name]["num_scored_tokens"] >= 100
    assert all(out[f"p{i}"]["verdict"] == "not watermarked" and out[f"p{i}"]["payload"] is None for i in range(4))
    assert all(out[n]["verdict"] == "too short" for n in ("short0", "short1", "blank0", "blank1"))
    assert all(r["record"] is None for r in out.values())
    assert (summary.texts, summary.scanned, summary.watermarked) == (12, 12, 4)
    assert not (tmp_path / "out.parquet.parts").exists()


def test_an_interrupted_scan_resumes_without_detecting_finished_texts_again(tmp_path, corpus, monkeypatch):
    key, _, rows = corpus
    path = _write_jsonl(tmp_path / "c.jsonl", rows)
    import provmark.scan as scan

    real, seen = scan.ScanWorker.__call__, []

    def crash_after_two_batches(self, batch):
        seen.extend(batch.column("id").to_pylist())
        if len(seen) > 8:
            raise KeyboardInterrupt  # as an operator's Ctrl-C would
        return real(self, batch)

    monkeypatch.setattr(scan, "_local_batches", lambda batches, keys, options: (
        scan.ScanWorker(keys, alpha=options.alpha, min_tokens=options.min_tokens, model_path=None)(b) for b in batches))
    monkeypatch.setattr(scan.ScanWorker, "__call__", crash_after_two_batches)
    with pytest.raises(KeyboardInterrupt):
        _scan(path, tmp_path / "out.csv", key, batch_size=4)
    assert len(list((tmp_path / "out.csv.parts").glob("part-*.parquet"))) == 2 and not (tmp_path / "out.csv").exists()
    monkeypatch.setattr(scan.ScanWorker, "__call__", lambda self, batch: (seen.extend(batch.column("id").to_pylist()),
                                                                          real(self, batch))[1])
    seen.clear()
    summary = _scan(path, tmp_path / "out.csv", key, batch_size=4)
    assert seen == [r["id"] for r in rows[8:]] and (summary.scanned, summary.texts) == (4, 12)
    resumed = pa.csv.read_csv(tmp_path / "out.csv").to_pylist()
    fresh = _scan(path, tmp_path / "fresh.csv", key, batch_size=4)
    assert fresh.scanned == 12 and resumed == pa.csv.read_csv(tmp_path / "fresh.csv").to_pylist()


def test_csv_parquet_and_a_folder_of_texts_read_as_the_same_corpus(tmp_path, corpus):
    _, _, rows = corpus
    rows = rows[:4]
    pa.csv.write_csv(pa.Table.from_pylist(rows), tmp_path / "c.csv")
    pa.parquet.write_table(pa.Table.from_pylist(rows), tmp_path / "c.parquet")
    (tmp_path / "texts").mkdir()
    for row in rows:
        (tmp_path / "texts" / f"{row['id']}.txt").write_text(row["text"])
    expected = [(r["id"], r["text"]) for r in rows]
    for source in ("c.csv", "c.parquet"):
        table = read_corpus(tmp_path / source)
        assert list(zip(table.column("id").to_pylist(), table.column("text").to_pylist())) == expected
    folder = read_corpus(tmp_path / "texts")
    assert sorted(zip(folder.column("id").to_pylist(), folder.column("text").to_pylist())) == \
        sorted((f"{i}.txt", t) for i, t in expected)


def test_a_corpus_without_its_text_column_or_with_duplicate_ids_is_refused(tmp_path):
    with pytest.raises(ParameterError, match="has no 'text' column .*name it with --text-field"):
        read_corpus(_write_jsonl(tmp_path / "a.jsonl", [{"id": "a", "body": "x"}]))
    with pytest.raises(ParameterError, match="ids must be unique"):
        read_corpus(_write_jsonl(tmp_path / "b.jsonl", [{"id": "a", "text": "x"}, {"id": "a", "text": "y"}]))
    with pytest.raises(ParameterError, match=r"give a \.jsonl, \.csv or \.parquet file"):
        read_corpus(tmp_path / "b.txt")


def test_the_ray_engine_writes_the_same_table_as_the_local_engine(tmp_path, corpus):
    key, _, rows = corpus
    path = _write_jsonl(tmp_path / "c.jsonl", rows)
    _scan(path, tmp_path / "local.parquet", key, workers=2, batch_size=5)
    summary = _scan(path, tmp_path / "ray.parquet", key, engine="ray", workers=2, batch_size=5)
    assert summary.scanned == 12
    assert pa.parquet.read_table(tmp_path / "ray.parquet").equals(pa.parquet.read_table(tmp_path / "local.parquet"))


def test_scan_on_the_command_line_writes_the_table_and_says_what_it_found(tmp_path, corpus):
    key, _, rows = corpus
    save_key(key, tmp_path / "key.json")
    path = _write_jsonl(tmp_path / "c.jsonl", rows)
    result = CliRunner().invoke(cli, ["scan", str(path), "--key", str(tmp_path / "key.json"), "--out",
                                      str(tmp_path / "out.csv"), "--workers", "1", "--min-tokens", "10", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"scanned 12 texts (12 in this run) with 1 key: 4 watermarked; {tmp_path / 'out.csv'}")
    assert pa.csv.read_csv(tmp_path / "out.csv").num_rows == 12
    bad = CliRunner().invoke(cli, ["scan", str(path), "--key", str(tmp_path / "key.json"), "--out",
                                   str(tmp_path / "out.txt")])
    assert bad.exit_code == 1 and bad.output == f"Error: output {tmp_path / 'out.txt'} must end in .parquet or .csv\n"


def test_scanning_a_tenants_keys_names_each_texts_record(tmp_path, tokenizer, monkeypatch):
    import base64

    from provmark.api.crypto import MASTER_KEY_ENV, MasterKey
    from provmark.api.registry import Registry

    monkeypatch.setenv(MASTER_KEY_ENV, base64.b64encode(bytes(range(32))).decode())
    registry = Registry.open(tmp_path / "r.db", MasterKey(bytes(range(32))))
    tenant, _ = registry.create_tenant("acme")
    multi = registry.create_key(tenant.id, "mpac", {"bits": 8, "delta": 4.0})
    zero = registry.create_key(tenant.id, "kgw", {"delta": 4.0})
    record = registry.new_record(multi.key_id, tenant_id=tenant.id, model=None)
    zero_text = _watermarked(tokenizer, registry.watermark_key(zero.key_id), seed=5)
    from provmark.api.provenance import text_sha256

    zero_record = registry.new_record(zero.key_id, tenant_id=tenant.id, model=None, text_sha256=text_sha256(zero_text))
    rows = [{"id": "a", "text": _watermarked(tokenizer, registry.watermark_key(multi.key_id), record.number, seed=4)},
            {"id": "b", "text": zero_text}, {"id": "c", "text": _plain(tokenizer, seed=9)}]
    registry.close()
    path = _write_jsonl(tmp_path / "c.jsonl", rows)
    result = CliRunner().invoke(cli, ["scan", str(path), "--db", str(tmp_path / "r.db"), "--tenant", "acme", "--out",
                                      str(tmp_path / "out.parquet"), "--workers", "1", "--no-progress"])
    assert result.exit_code == 0, result.output
    out = pa.parquet.read_table(tmp_path / "out.parquet").to_pylist()
    assert [(r["id"], r["verdict"], r["key_id"], r["record"]) for r in out] == [
        ("a", "watermarked", multi.key_id, record.id), ("b", "watermarked", zero.key_id, zero_record.id),
        ("c", "not watermarked", out[2]["key_id"], None)]
    assert os.path.exists(tmp_path / "out.parquet")
