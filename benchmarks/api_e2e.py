"""End to end on loopback with the embedded model: a tenant and keys made with the command line,
``provmark serve``, /v1/generate, then /v1/verify on the text as generated and on an edited copy
(so the record is found by its text hash and then by the decoded payload alone).

    python -m benchmarks.api_e2e --out benchmarks/results/api_e2e.txt
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import httpx

from benchmarks.api_server import ServerFixture

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    lines = []

    def say(line=""):
        print(line, flush=True)
        lines.append(line)

    server = ServerFixture(keys=[["--scheme", "mpac", "--bits", "16", "--radix", "4"], ["--scheme", "kgw"]])
    say("$ provmark tenants create --db registry.db bench  -> token (shown once)")
    say(f"$ provmark keys create --db registry.db --tenant bench --scheme mpac --bits 16 --radix 4  -> {server.key_ids[0]}")
    say(f"$ provmark keys create --db registry.db --tenant bench --scheme kgw  -> {server.key_ids[1]}")
    say(f"$ provmark serve --db registry.db --port {server.port}")
    ok = True
    with server, httpx.Client(timeout=600) as client:
        server.start(log=server.folder / "server.log")
        client.base_url, client.headers = server.url, server.headers
        for key_id in server.key_ids:
            say()
            body = {"key_id": key_id, "prompt": PROMPT, "max_new_tokens": args.max_new_tokens, "seed": args.seed,
                    "metadata": {"user": "u42", "session": "e2e"}}
            made = client.post("/v1/generate", json=body)
            say(f"POST /v1/generate {json.dumps({k: v for k, v in body.items() if k != 'prompt'})} -> {made.status_code}")
            made.raise_for_status()
            record = made.json()["record"]
            text = made.json()["text"]
            say(f"  record {record['id']} payload {record['payload_hex']} model {record['model']} "
                f"created {record['created_at']}; {made.json()['num_tokens']} tokens")
            say(f"  text: {text[:160]!r}...")
            sentences = text.split(". ")
            edited = ". ".join(sentences[1:]) + " (quoted without its first sentence)"
            for label, candidate in (("as generated", text), ("edited", edited)):
                answer = client.post("/v1/verify", json={"text": candidate})
                answer.raise_for_status()
                best = answer.json()["results"][0]
                found = best["record"]["id"] if best["record"] else None
                say(f"POST /v1/verify ({label}) -> {answer.status_code}: key {best['key_id']} watermarked "
                    f"{best['is_watermarked']} p {best['p_value']:.3g} decoded {best['payload_hex']} "
                    f"match {best['match']} record {found}")
                if best["note"]:
                    say(f"  note: {best['note']}")
                nearest = [(n["record"]["id"], round(n["bit_distance"], 3), n["bits_differ"]) for n in best["nearest_records"]]
                if nearest:
                    say(f"  nearest records (id, weighted distance, bits differing): {nearest}")
                if label == "as generated":
                    good = best["match"] == "text" and found == record["id"]
                elif record["payload"] is None:  # zero-bit: an edited text keeps the watermark, not the hash
                    good = best["is_watermarked"] and best["key_id"] == key_id
                else:  # the decoded payload names the record, or a misread bit leaves it the nearest
                    good = found == record["id"] or (nearest and nearest[0][0] == record["id"])
                ok &= bool(good)
                if not good:
                    say("  UNEXPECTED: the generating record was not found")
            shown = client.get(f"/v1/records/{record['id']}").json()
            say(f"GET /v1/records/{record['id']} -> tenant {shown['tenant']}, key {shown['key_id']}, "
                f"model {shown['model']}, created {shown['created_at']}, metadata {shown['metadata']}")
    say()
    say("PASS: verify returned the generating record" if ok else "FAIL")
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
