"""Schemathesis against the live API: every operation, examples + coverage + fuzzing + stateful
phases, positive and negative data, every check. Bounded by --max-examples per operation and
--max-time overall. Needs schemathesis (``pip install -c constraints.txt -e '.[bench]'``).

The server runs with a tiny random Llama (``--model``), so generation requests cost milliseconds,
and with rate limiting off (rate limiting has its own tests). The tenant has an mpac key, a
public kgw key, a synonym key (embedding ranks synonyms with the same tiny model) and one
generated record, so verify and records answer with real matches; and, for issue 16, the keys
that once broke verification for everyone: heavy ones (public synonym and balance keys, which
verification caps and sends to the heavy lane) and degenerate ones (a public kgw key and an mpac key
whose stored gamma is 1e-320, written into the registry as a row from before the bounds would
hold it; each must become its own error entry, never a 5xx).

    python -m benchmarks.api_fuzz --max-examples 100 --out benchmarks/results/api_fuzz.txt
"""

from __future__ import annotations

import argparse
import json
import re
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

from benchmarks.api_server import ServerFixture, tiny_model_dir


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-examples", type=int, default=100)
    parser.add_argument("--max-time", type=int, default=900, help="Seconds, the whole schemathesis run.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="provmark-fuzz-"))
    model = tiny_model_dir(folder / "tiny-llama")
    server = ServerFixture(folder=str(folder), keys=[
        ["--scheme", "mpac", "--bits", "16"], ["--scheme", "kgw", "--public"], ["--scheme", "synonym"],
        ["--scheme", "synonym", "--public"], ["--scheme", "balance", "--public"],  # heavy
        ["--scheme", "kgw", "--public"], ["--scheme", "mpac", "--bits", "16"],  # made degenerate below
    ], serve_args=["--rate-limit", "0", "--model", str(model)])
    with sqlite3.connect(server.db) as db:
        for key_id in server.key_ids[-2:]:
            (params,) = db.execute("SELECT params FROM keys WHERE id = ?", [key_id]).fetchone()
            db.execute("UPDATE keys SET params = ? WHERE id = ?", [json.dumps({**json.loads(params), "gamma": 1e-320}),
                                                                   key_id])
    with server:
        server.start(log=folder / "server.log")
        made = httpx.post(server.url + "/v1/generate", headers=server.headers, timeout=60,
                          json={"key_id": server.key_ids[0], "prompt": "hello", "max_new_tokens": 20})
        made.raise_for_status()
        report = folder / "report.json"
        command = [
            str(Path(sys.executable).with_name("st")), "run", server.url + "/openapi.json",
            "--header", f"Authorization: Bearer {server.token}", "--checks", "all",
            "--max-examples", str(args.max_examples), "--max-time", str(args.max_time), "--seed", str(args.seed),
            "--workers", "1", "--request-timeout", "300", "--report", "json", "--report-json-path", str(report),
            "--output-truncate", "true", "--output-sanitize", "false",
        ]
        run = subprocess.run(command, capture_output=True, text=True)
        log = (folder / "server.log").read_text(errors="replace")
    output = run.stdout + run.stderr
    (folder / "schemathesis.txt").write_text(output)
    server_errors = len(re.findall(r'" 5\d\d ', log))
    statuses = {}
    for status in re.findall(r'HTTP/1\.1" (\d{3}) ', log):
        statuses[status] = statuses.get(status, 0) + 1
    summary = [
        f"schemathesis exit status: {run.returncode}",
        f"requests seen by the server: {sum(statuses.values())}, by status: {json.dumps(dict(sorted(statuses.items())))}",
        f"5xx responses in the server log: {server_errors}",
        "",
        f"schemathesis output (whole, also in {folder / 'schemathesis.txt'}):",
        *output.strip().splitlines(),
    ]
    text = "\n".join(summary) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return run.returncode


if __name__ == "__main__":
    sys.exit(main())
