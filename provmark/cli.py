"""The ``provmark`` command line: a thin layer over the library (keys, embed, detect, eval) and over
the provenance registry (tenants, registry keys, records, serve)."""

from __future__ import annotations

import json
import os
import sys

import click

from provmark.api.limits import (
    DEFAULT_ATTRIBUTION_TOKENS,
    DEFAULT_BURST,
    DEFAULT_HEAVY_PER_CLIENT,
    DEFAULT_HEAVY_QUEUE,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_TOKENS_SCORED,
    DEFAULT_PROXY_TOKENS,
    DEFAULT_RATE,
    DEFAULT_SHUTDOWN_TIMEOUT,
    DEFAULT_TEXT_WORDS,
    TOKENS_PER_REQUEST,
)
from provmark.errors import InvalidTextError, ParameterError, ProvmarkError

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"]}


class _Group(click.Group):
    """Turns provmark's typed errors into one-line ``Error: ...`` messages (exit 1), never a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ProvmarkError as exc:
            raise click.ClickException(str(exc)) from None


def _quiet_libraries():
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


def model_option(func):
    return click.option(
        "--model",
        "model_path",
        type=click.Path(file_okay=False),
        default=None,
        help="Local Hugging Face causal LM folder (default: the embedded SmolLM2-135M-Instruct).",
    )(func)


class _TextFile(click.File):
    """``click.File("rb")`` whose folder is one ``Error:`` line (InvalidTextError), not a usage error."""

    def __init__(self):
        super().__init__("rb")

    def convert(self, value, param, ctx):
        if isinstance(value, (str, os.PathLike)) and os.path.isdir(value):
            raise InvalidTextError(f"{value} is a folder; give a text file (or - for stdin)")
        return super().convert(value, param, ctx)


def key_option(func):
    # A plain path: load_key refuses a folder or a missing file with one Error line, not a usage error.
    return click.option("--key", "key_path", required=True, type=click.Path(), help="Key file (JSON).")(func)


_DB_HELP = "Registry: an SQLite file (created on first use) or a postgresql://user@host:port/database URL"


def db_option(func):
    return click.option("--db", "db_path", required=True, envvar="PROVMARK_DB", show_envvar=True,
                        help=_DB_HELP + ".")(func)


def _db_default(db_path, key_file):
    """keys create and scan: --db, else $PROVMARK_DB unless a key file is given (--out, --key)."""
    import os

    return db_path if db_path is not None or key_file is not None else os.environ.get("PROVMARK_DB")


def _db_name(db_path) -> str:
    from provmark.api.stores import describe_target

    return describe_target(db_path)


def master_key_option(func):
    return click.option("--master-key-file", type=click.Path(dir_okay=False), default=None,
                        help="File holding the base64 master key that seals key secrets (default: $PROVMARK_MASTER_KEY).")(func)


def json_option(func):
    return click.option("--json", "as_json", is_flag=True, help="Print JSON.")(func)


def _registry(db_path, master_key_file=None, *, need_master_key=False):
    """Open the registry; the master key is loaded when a command seals or opens secrets."""
    from provmark.api.crypto import load_master_key
    from provmark.api.registry import Registry

    master_key = load_master_key(master_key_file) if need_master_key else None
    registry = Registry.open(db_path, master_key)
    click.get_current_context().call_on_close(registry.close)
    return registry


@click.group(cls=_Group, context_settings=CONTEXT_SETTINGS)
@click.version_option(package_name="provmark")
def cli():
    """Keyed text watermarks: create keys, embed watermarks while generating, detect them."""


@cli.group(cls=_Group)
def keys():
    """Create watermark keys: key files (--out) or registry keys (--db)."""


class _SchemeParamsCommand(click.Command):
    """A command that also takes ``--scheme`` and every scheme parameter as options, derived when it
    runs from the scheme registry and the config dataclasses (``watermark.params``): a scheme
    registered later (a plugin) is listed and brings its parameters with it."""

    def get_params(self, ctx):
        from provmark.watermark.params import scheme_params
        from provmark.watermark.schemes import SCHEMES

        kinds = {"zero-bit": [], "multi-bit": [], "finished text": []}
        for name, scheme in SCHEMES.items():
            kind = "finished text" if not scheme.generation_time else "multi-bit" if scheme.supports_payload else "zero-bit"
            kinds[kind].append(name)
        listed = "; ".join(f"{', '.join(names)} ({kind})" for kind, names in kinds.items() if names)
        derived = [click.Option(["--scheme"], required=True, help=f"Watermark scheme: {listed}.")] + [
            click.Option([param.option, param.name], default=None, help=param.help,
                         type=click.Choice(param.choices) if param.choices else param.type)
            for param in scheme_params().values()
        ]
        *own, help_option = super().get_params(ctx)
        return [*derived[:1], *own, *derived[1:], help_option]


@keys.command("create", cls=_SchemeParamsCommand)
@click.option("--out", "out_path", type=click.Path(dir_okay=False), help="Where to write the key file.")
@click.option("--db", "db_path", help=f"Create the key in this registry instead (with --tenant; default without --out: "
                                     f"$PROVMARK_DB); its secret is sealed there. {_DB_HELP}.")
@click.option("--tenant", "tenant_name", default=None, help="With --db: the tenant that owns the key.")
@click.option("--public", is_flag=True, help="With --db: let callers without a token verify texts against the key.")
@master_key_option
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
def keys_create(scheme, out_path, db_path, tenant_name, public, master_key_file, force, **scheme_params):
    """Create a key (a fresh 32-byte secret plus the scheme's parameters): a key file (--out) or a
    registry key (--db with --tenant).

    A key file is written readable by its owner only; detection needs it. A registry key's
    secret is sealed with the master key and never leaves the registry; the API generates and
    verifies with it. The scheme parameters below are those of the schemes' configs, each with
    its default; options a scheme does not have are refused.

    Example:

        provmark keys create --scheme kgw --gamma 0.25 --delta 2 --out key.json
        provmark keys create --scheme mpac --bits 32 --radix 4 --out mkey.json
        provmark keys create --scheme majormark+ --bits 32 --out mmkey.json
        provmark keys create --scheme balance --bits 20 --out bkey.json
        provmark keys create --scheme synonym --out skey.json
        provmark keys create --db registry.db --tenant acme --scheme mpac --bits 32 --public
    """
    from provmark.watermark.keys import create_key, save_key
    from provmark.watermark.payload import capacity_bits

    params = {name: value for name, value in scheme_params.items() if value is not None}
    db_path = _db_default(db_path, out_path)
    if (out_path is None) == (db_path is None):
        raise ParameterError("give --out FILE (a key file) or --db PATH --tenant NAME (a registry key), not both")
    if db_path is None:
        if tenant_name or public:
            raise ParameterError("--tenant and --public apply to registry keys: add --db PATH, or drop them")
        key = create_key(scheme, params)
        save_key(key, out_path, overwrite=force)
        where, capacity = out_path, key.config.capacity if key.config.supports_payload else None
    else:
        if tenant_name is None:
            raise ParameterError("a registry key belongs to a tenant: give --tenant NAME")
        if force:
            raise ParameterError("--force applies to key files (--out); drop it")
        registry = _registry(db_path, master_key_file, need_master_key=True)
        key = registry.create_key(registry.tenant(tenant_name).id, scheme, params, public_verify=public)
        where, capacity = f"{_db_name(db_path)} for tenant {tenant_name}", key.capacity
    line = f"created {key.scheme} key {key.key_id} in {where}"
    if capacity is not None:
        line += f" (payloads 0 to {capacity - 1}, {capacity_bits(capacity):.2f} bits)"
    click.echo(line)


def _key_line(key, tenants) -> str:
    used = f"{key.records}" if key.capacity is None else f"{key.records}/{key.capacity}"
    flags = ", public" if key.public_verify else ""
    successor = f" -> {key.replaced_by}" if key.replaced_by else ""
    return (f"{key.key_id}  {tenants.get(key.tenant_id, key.tenant_id)}  {key.scheme}  {key.status}{flags}  "
            f"records {used}  {key.created_at}{successor}")


@keys.command("list")
@db_option
@click.option("--tenant", "tenant_name", default=None, help="Only this tenant's keys.")
@json_option
def keys_list(db_path, tenant_name, as_json):
    """List the registry's keys (never their secrets): id, tenant, scheme, status, records issued.

    Example:

        provmark keys list --db registry.db --tenant acme
    """
    registry = _registry(db_path)
    tenant_id = registry.tenant(tenant_name).id if tenant_name else None
    found = registry.keys(tenant_id)
    if as_json:
        click.echo(json.dumps([k.to_dict() for k in found], indent=2))
        return
    tenants = {t.id: t.name for t in registry.tenants()}
    for key in found:
        click.echo(_key_line(key, tenants))


@keys.command("rotate")
@db_option
@master_key_option
@click.argument("key_id")
def keys_rotate(db_path, master_key_file, key_id):
    """Retire KEY_ID and create its successor (same scheme and parameters, fresh secret).

    The retired key keeps verifying the records issued under it; new generations must use the
    successor. Rotate a multi-bit key before its payloads run out.

    Example:

        provmark keys rotate --db registry.db k_0123456789abcdef
    """
    registry = _registry(db_path, master_key_file, need_master_key=True)
    new = registry.rotate_key(key_id)
    click.echo(f"retired {key_id}; its successor is {new.key_id} ({new.scheme})")


@cli.group(cls=_Group)
def tenants():
    """Manage the registry's tenants."""


@tenants.command("create")
@db_option
@click.argument("name")
def tenants_create(db_path, name):
    """Create tenant NAME and print its API token, once: only its hash is stored.

    Example:

        provmark tenants create --db registry.db acme
    """
    registry = _registry(db_path)
    tenant, token = registry.create_tenant(name)
    click.echo(f"created tenant {tenant.name} ({tenant.id}); its API token, shown only now:")
    click.echo(token)


@cli.group(cls=_Group)
def records():
    """Inspect the registry's provenance records."""


@records.command("list")
@db_option
@click.option("--tenant", "tenant_name", default=None, help="Only this tenant's records.")
@click.option("--key", "key_id", default=None, help="Only the records of this key.")
@click.option("--limit", type=click.IntRange(1), default=20, show_default=True, help="Most recent records shown.")
@json_option
def records_list(db_path, tenant_name, key_id, limit, as_json):
    """List the most recent records, newest first.

    Example:

        provmark records list --db registry.db --tenant acme --limit 5
    """
    registry = _registry(db_path)
    tenant_id = registry.tenant(tenant_name).id if tenant_name else None
    found = registry.records(tenant_id=tenant_id, key_id=key_id, limit=limit)
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in found], indent=2))
        return
    for record in found:
        payload = f"payload {record.payload_hex}" if record.payload_hex else "no payload"
        text = record.text_sha256[:12] if record.text_sha256 else "no text"
        click.echo(f"{record.id}  {record.tenant}  {record.created_at}  {record.model}  {payload}  text {text}")


@records.command("show")
@db_option
@click.argument("record_id")
def records_show(db_path, record_id):
    """Print one record as JSON.

    Example:

        provmark records show --db registry.db k_0123456789abcdef.42
    """
    click.echo(json.dumps(_registry(db_path).record(record_id).to_dict(), indent=2))


@cli.command()
@db_option
@master_key_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="Port to listen on.")
@click.option("--workers", type=click.IntRange(1), default=1, show_default=True,
              help="Server processes. Set it to the number of CPU cores for throughput: one process verifies "
                   "on one core at a time (Python's GIL). Each process enforces 1/N of --rate-limit and of "
                   "--burst (at least 1), so a token never gets more than the limit in total but may be "
                   "throttled early when its requests land on one process.")
@click.option("--rate-limit", type=click.FloatRange(0), default=DEFAULT_RATE, show_default=True,
              help="Requests per second per API token (per address without one); 0 turns limiting off.")
@click.option("--burst", type=click.IntRange(1), default=DEFAULT_BURST, show_default=True,
              help="Requests a client may make at once before the rate applies.")
@click.option("--max-body-bytes", type=click.IntRange(1), default=DEFAULT_MAX_BODY_BYTES, show_default=True,
              help="Larger request bodies get 413.")
@click.option("--torch-threads", type=click.IntRange(1), default=1, show_default=True,
              help="torch's intra-op threads per process. Requests already run in parallel, and detection's small "
                   "tensor operations only pay a thread pool's wake-ups; raise it for a generation-heavy server.")
@click.option("--trusted-proxies", default=None, metavar="ADDRS",
              help="Comma-separated addresses or CIDR ranges of reverse proxies whose X-Forwarded-For names the client "
                   "(for the per-address rate limit; like uvicorn's --forwarded-allow-ips). Default: none, so proxy "
                   "headers are ignored and a client cannot choose its own address.")
@click.option("--max-tokens-scored", type=click.IntRange(1), default=DEFAULT_MAX_TOKENS_SCORED, show_default=True,
              help="Tokens one verification may score, summed over its texts and keys; more is a 422. The rate limit "
                   f"charges a verification one request plus one per {TOKENS_PER_REQUEST} tokens scored, each weighted "
                   "by its scheme's cost (e.g. synonym words 13, balance tokens 2,300).")
@click.option("--max-proxy-tokens", type=click.IntRange(1), default=DEFAULT_PROXY_TOKENS, show_default=True,
              help="Tokens of each text a balance key scores (each runs the proxy LM); results past it say capped_at.")
@click.option("--max-text-words", type=click.IntRange(1), default=DEFAULT_TEXT_WORDS, show_default=True,
              help="Words of each text a synonym key scores; results past it say capped_at.")
@click.option("--max-attribution-tokens", type=click.IntRange(1), default=DEFAULT_ATTRIBUTION_TOKENS, show_default=True,
              help="Tokens of each text verify's zero-shot attribution may score (a forward pass of the serving "
                   "model); a longer text asked with attribution is a 422.")
@click.option("--max-heavy-per-client", type=click.IntRange(1), default=DEFAULT_HEAVY_PER_CLIENT, show_default=True,
              help="Heavy verifications (long texts, synonym and balance keys) one API token or address may have in "
                   "flight per process; one more is a 429. They run in a low-priority lane beside the light ones.")
@click.option("--heavy-queue", type=click.IntRange(0), default=DEFAULT_HEAVY_QUEUE, show_default=True,
              help="Heavy verifications that may wait for the heavy lane per process; one more is a 503.")
@click.option("--shutdown-timeout", type=click.FloatRange(0), default=DEFAULT_SHUTDOWN_TIMEOUT, show_default=True,
              help="Seconds requests in flight may finish after SIGTERM; then their detection is cancelled (it stops "
                   "within one text under one key) and the server exits.")
@model_option
def serve(db_path, master_key_file, host, port, workers, rate_limit, burst, max_body_bytes, torch_threads,
          trusted_proxies, max_tokens_scored, max_proxy_tokens, max_text_words, max_attribution_tokens,
          max_heavy_per_client, heavy_queue, shutdown_timeout, model_path):
    """Serve the HTTP API over the registry (OpenAPI docs at /docs).

    Refuses to start without the master key ($PROVMARK_MASTER_KEY or --master-key-file). Each
    worker process loads the tokenizer at start and the model on its first generation (or
    Balance verification), and all of them share the registry file.

    Example:

        PROVMARK_MASTER_KEY=$(openssl rand -base64 32) provmark serve --db registry.db --port 8000 --workers 2
    """
    import uvicorn

    from provmark.api.app import ServeSettings
    from provmark.watermark.models import load_tokenizer

    # Migrate the registry, check the master key and load the tokenizer here, once: errors read as
    # one line (a worker that fails at start is restarted by uvicorn, forever), and the workers that
    # start together find the schema in place.
    _registry(db_path, master_key_file, need_master_key=True).close()
    _quiet_libraries()
    load_tokenizer(model_path)
    settings = ServeSettings(
        db_path=db_path, master_key_file=master_key_file, rate=rate_limit, burst=burst, max_body_bytes=max_body_bytes,
        torch_threads=torch_threads, model_path=model_path, workers=workers, trusted_proxies=trusted_proxies,
        work_limits={"max_tokens_scored": max_tokens_scored, "proxy_tokens": max_proxy_tokens,
                     "text_words": max_text_words, "attribution_tokens": max_attribution_tokens,
                     "heavy_per_client": max_heavy_per_client, "heavy_queue": heavy_queue},
    )
    os.environ.update(settings.to_environment())  # workers inherit the environment and the working directory
    plural = "es" if workers > 1 else ""
    click.echo(f"provmark API on http://{host}:{port} (registry {_db_name(db_path)}, {workers} worker process{plural})",
               err=True)
    # uvicorn trusts X-Forwarded-For from 127.0.0.1 by default; the app reads it only from --trusted-proxies.
    uvicorn.run("provmark.api.app:app_from_environment", factory=True, host=host, port=port, workers=workers,
                log_level="info", proxy_headers=False, h11_max_incomplete_event_size=_MAX_HEADER_BYTES,
                timeout_graceful_shutdown=shutdown_timeout)


_MAX_HEADER_BYTES = 256 * 1024
"""Request heads uvicorn reads before refusing in plain text; the app answers oversized headers it
receives in the JSON shape (``api.app.MAX_AUTHORIZATION_BYTES``), so this is set above them."""


@cli.command()
@key_option
@click.option("--prompt", default=None, help="Prompt to continue (generation-time schemes).")
@click.option("--text", "text_file", type=_TextFile(), default=None,
              help="synonym keys: FILE (or - for stdin) of finished text to watermark.")
@click.option("--payload", default=None, help="Multi-bit keys: the payload, decimal or 0x-hex (e.g. 0x1234ABCD).")
@click.option("--max-new-tokens", type=click.IntRange(1, 4096), default=200, show_default=True)
@click.option("--temperature", type=click.FloatRange(0, min_open=True), default=1.0, show_default=True)
@click.option("--seed", type=int, default=None, help="Seed for reproducible sampling.")
@click.option("--chat/--no-chat", default=None, help="Apply the model's chat template (default: when it has one).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON with the text and the settings.")
@model_option
def embed(key_path, prompt, text_file, payload, max_new_tokens, temperature, seed, chat, as_json, model_path):
    """Generate a watermarked continuation of --prompt and print it; with a synonym key,
    watermark the finished text of --text instead.

    A multi-bit key needs --payload; a zero-bit key refuses one. A progress bar runs on
    stderr; the text alone goes to stdout. A synonym key rewrites words of the text by keyed
    synonyms and keeps every other character; --model picks the LM that ranks them.

    Example:

        provmark embed --key key.json --prompt "Write a story about a lighthouse." --seed 1
        provmark embed --key mkey.json --prompt "Tell me about tides." --payload 0x1234ABCD
        provmark embed --key skey.json --text answer.txt > marked.txt
    """
    from provmark.front import EmbedInputError, Watermark, check_embed_inputs
    from provmark.watermark.keys import load_key
    from provmark.watermark.models import Models
    from provmark.watermark.payload import parse_payload, payload_hex

    key = load_key(key_path)
    watermark = Watermark(key, Models(model_path))
    inputs = {"prompts": None if prompt is None else [prompt],
              "texts": None if text_file is None else [_read_text(text_file)]}
    try:
        check_embed_inputs(watermark.scheme, **inputs, payloads=None if payload is None else [payload],
                           supports_payload=key.config.supports_payload)
    except EmbedInputError as exc:
        raise ParameterError(_EMBED_INPUT_ERRORS[exc.reason].format(scheme=exc.scheme)) from None
    payloads = None if payload is None else [parse_payload(payload, key.config.capacity)]
    _quiet_libraries()
    (embedded,) = watermark.embed(**inputs, payloads=payloads, chat=chat, seed=seed, progress=True,
                                  max_new_tokens=max_new_tokens, temperature=temperature)
    if not watermark.scheme.generation_time:
        if not as_json:
            click.echo(embedded.text, nl=False)
            return
        click.echo(json.dumps({
            "text": embedded.text,
            "key_id": key.key_id,
            "scheme": key.scheme,
            "model": watermark.models.name,
            "num_words": embedded.num_words,
            "num_eligible": embedded.num_eligible,
            "substitutions": [[s.start, s.end, s.original, s.replacement] for s in embedded.substitutions],
            **({} if payloads is None else {"payload_hex": payload_hex(payloads[0], key.config.bits)}),
        }, indent=2))
        return
    if as_json:
        click.echo(json.dumps({
            "text": embedded.text,
            "num_tokens": len(embedded.token_ids),
            "key_id": key.key_id,
            "scheme": key.scheme,
            "payload_hex": None if payloads is None else payload_hex(payloads[0], key.config.bits),
            "model": watermark.models.name,
            "prompt": prompt,
            "settings": {"max_new_tokens": max_new_tokens, "temperature": temperature, "seed": seed, "chat": chat},
        }, indent=2))
    else:
        click.echo(embedded.text)


_EMBED_INPUT_ERRORS = {
    "wants_text": "{scheme} keys watermark finished text: give --text FILE instead of --prompt",
    "wants_prompt": "--text works with synonym keys; {scheme} watermarks while generating: give --prompt",
    "no_prompt": "give --prompt, the text to continue",
    "needs_payload": "{scheme} keys carry a payload: give --payload (decimal or 0x-hex)",
    "no_payload": "{scheme} is a zero-bit scheme and carries no payload; drop --payload",
}
"""``embed``'s words for the front door's ``EmbedInputError`` reasons."""


def _read_text(source) -> str:
    data = source.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidTextError(f"input is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})") from None


@cli.command()
@key_option
@click.argument("file", type=_TextFile())
@click.option("--alpha", type=float, default=1e-3, show_default=True, help="Significance level of the verdict.")
@click.option("--min-tokens", type=click.IntRange(1), default=10, show_default=True, help="Refuse texts with fewer scorable tokens.")
@click.option("--locate", is_flag=True,
              help="balance, vanilla: search for a watermarked span inside longer text (copy-paste) and report it.")
@click.option("--explain", is_flag=True,
              help="Show which tokens (words, for a synonym key) carried evidence: the text coloured token by token "
                   "(with --json: every token's evidence).")
@click.option("--html", "html_path", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Also write the explanation as a self-contained HTML page (a per-token heat map and the decoded bits).")
@click.option("--candidates", "candidates_file", type=click.File("rb"), default=None,
              help="Multi-bit keys: a file of known payloads, one a line (decimal or 0x-hex): name the one the text "
                   "carries with a record-level p-value (each scored directly, the best corrected for how many), and "
                   "whether every other candidate is excluded (an exclusive match).")
@click.option("--json", "as_json", is_flag=True, help="Print the detection result as JSON.")
@model_option
def detect(key_path, file, alpha, min_tokens, locate, explain, html_path, candidates_file, as_json, model_path):
    """Test FILE (or - for stdin) for the key's watermark.

    Prints the verdict, the p-value (also as log10, which stays readable far below 1e-308) and
    the number of tokens scored; for a multi-bit key also the decoded payload and the lowest
    per-bit confidence (all of them under --json). The tokenizer must be the generating model's
    (--model); Balance-Marking also runs that model as its proxy. A synonym key needs no model:
    it scores the eligible words (their keyed bits are under --json, as word_bits). --locate finds a watermarked
    span of a balance or vanilla text pasted into other text and prints its token span.
    --explain colours the text: green tokens lie in the set the embedder prefers at their step
    for the detected payload, red ones do not, dim ones were not scored (for a synonym key, words:
    green when their keyed bit is 1); --html writes the same as a page. --candidates tests the
    text against known payloads (a registry's records, without the registry): each is scored
    directly and the best one's p-value is corrected for how many were scored; the presence test
    and this record test then decide at alpha / 2 each. A match is exclusive when every other
    candidate is also excluded: then a wrong payload is at most an alpha event.

    Example:

        provmark detect --key key.json story.txt
        provmark detect --key mkey.json tides.txt --candidates issued.txt
        provmark detect --key key.json story.txt --explain --html story.html
        provmark detect --key skey.json marked.txt
    """
    from provmark.front import Watermark, locate_schemes, require_text
    from provmark.watermark.keys import load_key
    from provmark.watermark.models import Models

    text = require_text(_read_text(file))
    key = load_key(key_path)
    _quiet_libraries()
    watermark = Watermark(key, Models(model_path))
    if locate and (explain or html_path):
        raise ParameterError("--locate cannot be combined with --explain or --html")
    if explain or html_path:
        _explain(watermark, text, alpha=alpha, min_tokens=min_tokens, html_path=html_path, as_json=as_json,
                 show=explain)
        return
    if locate and not watermark.scheme.supports_locate:
        raise ParameterError(f"--locate works with {locate_schemes()} keys, not {key.scheme}")
    if locate and watermark.locate_caveat():
        click.echo(f"note: {watermark.locate_caveat()}", err=True)
    if candidates_file is not None:
        if locate:
            raise ParameterError("--candidates cannot be combined with --locate")
        _attribute(watermark, text, _read_candidates(candidates_file, key), alpha=alpha, min_tokens=min_tokens,
                   as_json=as_json)
        return
    (result,) = watermark.detect([text], alpha=alpha, min_tokens=None if locate else min_tokens, locate=locate)
    click.echo(result.to_json(indent=2) if as_json else _summary(result))


def _read_candidates(source, key) -> list[int]:
    """The payloads of a --candidates file, one a line (blank lines and # comments skipped)."""
    from provmark.watermark.payload import parse_payload

    if not key.config.supports_payload:
        raise ParameterError(f"{key.scheme} is a zero-bit scheme: it carries no payload to match --candidates against")
    lines = [line.split("#", 1)[0].strip() for line in _read_text(source).splitlines()]
    payloads = [parse_payload(line, key.config.capacity) for line in lines if line]
    if not payloads:
        raise ParameterError("--candidates lists no payload; give one a line, decimal or 0x-hex")
    return payloads


def _attribute(watermark, text, candidates, *, alpha, min_tokens, as_json):
    """``detect --candidates``: the presence test and the record test, each at alpha / 2."""
    (result,) = watermark.detect([text], alpha=alpha / 2, min_tokens=min_tokens)
    (match,) = watermark.attribute([text], candidates, alpha=alpha / 2)
    if as_json:
        click.echo(json.dumps({**result.to_dict(), "record_test": match.to_dict()}, indent=2))
        return
    click.echo(_summary(result))
    if match.is_match:
        line = f"carries payload {match.payload_hex}: record-level p {match.corrected_p_value:.3g}"
    else:
        line = (f"matches none of the candidates: the best, {match.payload_hex}, has record-level p "
                f"{match.corrected_p_value:.3g}")
    click.echo(f"{line} (corrected for {match.num_candidates} candidates, alpha {match.alpha:g})")
    if match.is_match and match.exclusion_log10_p_value is not None:
        verdict = "exclusive" if match.is_exclusive else "not exclusive"
        click.echo(f"{verdict}: the hardest other candidate, {match.competitor_hex}, has weighted exclusion log10 p "
                   f"{match.exclusion_log10_p_value:.2f}")
    if match.runner_up is not None:
        click.echo(f"runner-up: {match.runner_up_hex}  log10 p: {match.runner_up_log10_p_value:.2f}")


def _summary(result) -> str:
    """The human-readable lines of a detection result."""
    verdict = "watermarked" if result.is_watermarked else "not watermarked"
    from provmark.watermark.schemes import get_scheme

    unit = "eligible words" if get_scheme(result.scheme).reads_text else "tokens"
    lines = [
        f"{verdict} (alpha {result.alpha:g})",
        f"p-value: {result.p_value:.3g}  log10 p: {result.log10_p_value:.2f}",
        f"{unit} scored: {result.num_scored_tokens}  score (z): {result.score:.2f}",
    ]
    if result.payload_hex is not None:
        lines.append(f"payload: {result.payload_hex}  lowest bit confidence: {min(result.bit_confidences):.3f}")
    elif get_scheme(result.scheme).supports_payload:  # a check-bit key: no candidate codeword passed the check
        lines.append("payload: none (no decoded codeword passed the key's check bits)")
    lines += [f"watermarked span: tokens {start} to {end}" for start, end in result.spans]
    lines.append(f"scheme: {result.scheme}  key: {result.key_id}")
    return "\n".join(lines)


def _explain(watermark, text, *, alpha, min_tokens, html_path, as_json, show):
    from pathlib import Path

    from provmark.detector.render import render_html, render_terminal

    explanation = watermark.explain(text, alpha=alpha, min_tokens=min_tokens)
    if html_path:
        Path(html_path).write_text(render_html(explanation), encoding="utf-8")
    if as_json:
        click.echo(json.dumps(explanation.to_dict() if show else explanation.result.to_dict(), indent=2))
    elif show:
        click.echo(render_terminal(explanation))
    else:
        click.echo(_summary(explanation.result))
    if html_path and not as_json:
        click.echo(f"explanation written to {html_path}", err=True)


@cli.command("eval")
@click.option("--suite", "suite_name", default="quick", show_default=True,
              help="Named suite: quick (6 prompts x 80 tokens, model-free attacks; minutes on a CPU) or full "
                   "(20 prompts x 200 tokens, every attack, the LM ones included; hours on a CPU).")
@click.option("--out", "out_dir", required=True, type=click.Path(),
              help="Folder for results.csv, summary.csv, the PNG plots, explanation.html (and .png) and report.md "
                   "(created when missing).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the keys, payloads, sampling and attacks.")
@model_option
def eval_(suite_name, out_dir, seed, model_path):
    """Evaluate every scheme side by side under every attack at three strengths.

    Generates watermarked texts with kgw, mpac, majormark+, balance and vanilla, watermarks the
    unwatermarked generations with the synonym scheme, attacks them (provmark.attacks, at their
    standard strengths) and detects them, and human-written text (Python Language Reference
    prose) as well. Writes per-text and per-cell CSVs, detection-rate plots, one explained text
    (HTML, and PNG when Chromium is installed) and a Markdown report (detection rate and
    empirical false-positive rate at alpha 0.01 and 0.001, bit accuracy, exact match,
    perplexity, top-5 hit rate). A progress bar runs on stderr.

    Example:

    \b
        provmark eval --suite quick --out eval-quick
        provmark eval --suite full --out eval-full --seed 1
    """
    from provmark.evaluation import check_output_dir, get_suite, run_suite, write_outputs
    from provmark.watermark.models import load_model

    suite = get_suite(suite_name)
    folder = check_output_dir(out_dir)  # before the model loads: a bad --out fails at once
    _quiet_libraries()
    loaded = load_model(model_path)
    evaluation = run_suite(suite, loaded.model, loaded.tokenizer, seed=seed, model_name=loaded.name, progress=True)
    command = f"provmark eval --suite {suite.name} --out {out_dir} --seed {seed}"
    if model_path:
        command += f" --model {model_path}"
    for path in write_outputs(evaluation, folder, command):
        click.echo(f"wrote {path}")
    click.echo(f"suite {suite.name}: {len(evaluation.rows)} detections in {evaluation.seconds:.0f} s")


# -- provmark attribute (zero-shot attribution, detector.zero_shot) ---------------------------


@cli.command("attribute")
@click.argument("file", type=click.File("rb"))
@click.option("--model", "model_paths", multiple=True, type=click.Path(file_okay=False),
              help="Candidate model: a local Hugging Face causal LM folder; repeat for several (default: the "
                   "embedded SmolLM2-135M-Instruct).")
@click.option("--prompt", default=None, help="The prompt the text answered: score it in its generation context.")
@click.option("--chat/--no-chat", default=None, help="Put --prompt through the chat template (default: when the model has one).")
@click.option("--temperature", type=click.FloatRange(0, min_open=True), default=1.0, show_default=True,
              help="Sampling temperature of the generation setting tested against.")
@click.option("--top-k", type=click.IntRange(0), default=0, show_default=True, help="Its top-k (0: none).")
@click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=1.0, show_default=True,
              help="Its top-p (1: none).")
@click.option("--alpha", type=float, default=0.01, show_default=True, help="Significance level of both verdicts.")
@click.option("--bound", type=click.Choice(["normal", "bennett"]), default="normal", show_default=True,
              help="p-value of the 'written by' test: martingale CLT (normal) or the finite-sample Bennett mixture.")
@click.option("--human-references", type=click.IntRange(1), default=None,
              help="Use only the first N human reference texts for the 'not human' test (default: all 200).")
@click.option("--no-human", is_flag=True, help="Skip the 'not human' test (and the scoring of its references).")
@click.option("--min-tokens", type=click.IntRange(1), default=10, show_default=True, help="Refuse shorter texts.")
@json_option
def attribute_command(file, model_paths, prompt, chat, temperature, top_k, top_p, alpha, bound, human_references,
                      no_human, min_tokens, as_json):
    """Zero-shot attribution: is FILE (or - for stdin) consistent with having been sampled from
    a model, and which of several candidates fits best? No watermark or key is needed.

    Under each candidate, the text's log-perplexity is compared with the model's own entropy
    along it (Radvand et al., arXiv 2501.02406): the "written by" test rejects when the text is
    less, or more, predictable than the model's samples at the given temperature/top-k/top-p
    would be (two-sided p-value); the "not human" test ranks the text against committed
    human-written references (Debian Administrator's Handbook prose) cut to its length
    (one-sided, conformal p-value). The winner is the candidate whose "written by" p-value is
    largest. The first run per model scores the references (minutes on a CPU) and caches them.

    Example:

    \b
        provmark attribute answer.txt
        provmark attribute answer.txt --prompt "Tell me about tides." --temperature 0.7
        provmark attribute answer.txt --model ./model-a --model ./model-b --json
    """
    from provmark.detector.zero_shot import SamplingSettings, ZeroShotScorer, attribute
    from provmark.watermark.models import load_model

    text = _read_text(file)
    if not text.strip():
        raise InvalidTextError("text is empty; give the text to check")
    if prompt is not None and not prompt.strip():
        raise InvalidTextError("prompt is empty; give the prompt the text answered, or drop --prompt")
    sampling = SamplingSettings(temperature=temperature, top_k=top_k, top_p=top_p)
    _quiet_libraries()
    scorers = []
    for path in model_paths or (None,):
        loaded = load_model(path)
        scorers.append(ZeroShotScorer(loaded.model, loaded.tokenizer, sampling=sampling, name=loaded.name))
    outcome = attribute(scorers, text, prompt, chat=chat, alpha=alpha, method=bound, human=not no_human,
                        human_limit=human_references, min_tokens=min_tokens)
    if as_json:
        click.echo(json.dumps(outcome.to_dict(), indent=2))
        return
    best = next(c for c in outcome.candidates if c.model == outcome.winner)
    verdict = "consistent with" if outcome.consistent else "not written by"
    click.echo(f"{verdict} {outcome.winner} (alpha {alpha:g}, p {best.p_value_model:.3g})"
               + ("" if len(outcome.candidates) == 1 else f"; best of {len(outcome.candidates)} candidates"))
    if best.not_human is not None:
        click.echo(f"{'not human' if best.not_human else 'could be human'} (p {best.p_value_human:.3g} against "
                   f"{best.num_human_references} human references)")
    for candidate in outcome.candidates:
        click.echo(f"{candidate.model}: z {candidate.z_score:+.2f}  p {candidate.p_value_model:.3g}  "
                   f"log-perplexity {candidate.log_perplexity:.3f}  entropy {candidate.entropy:.3f}  "
                   f"tokens {candidate.num_tokens}" + ("  (scored after the prompt)" if candidate.prompt_scored else ""))


@cli.command()
@click.argument("corpus", type=click.Path(exists=True))
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False),
              help="Results table: .parquet or .csv (one row per text). Resumes from its .parts folder.")
@click.option("--key", "key_path", type=click.Path(dir_okay=False), default=None, help="Key file (JSON) to scan with.")
@click.option("--db", "db_path", default=None,
              help=f"Scan with every key of --tenant in this registry instead (default without --key: $PROVMARK_DB); "
                   f"records are named. {_DB_HELP}.")
@click.option("--tenant", "tenant_name", default=None, help="With --db: the tenant whose keys scan the corpus.")
@master_key_option
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: a process pool on this machine; ray: Ray Data actors (pip install 'provmark[scale]').")
@click.option("--address", "ray_address", default=None,
              help="--engine ray: the Ray cluster to join (default: start a local Ray runtime).")
@click.option("--workers", type=click.IntRange(0), default=0, show_default=True,
              help="Processes (local) or actors (ray); 0: one per CPU core.")
@click.option("--batch-size", type=click.IntRange(1), default=64, show_default=True, help="Texts per task.")
@click.option("--id-field", default="id", show_default=True, help="Id column of a JSONL, CSV or Parquet corpus.")
@click.option("--text-field", default="text", show_default=True, help="Text column of a JSONL, CSV or Parquet corpus.")
@click.option("--alpha", type=float, default=1e-3, show_default=True, help="Significance level of the verdict.")
@click.option("--min-tokens", type=click.IntRange(0), default=1, show_default=True,
              help="Texts with fewer scored tokens are reported as too short.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bar on stderr.")
@model_option
def scan(corpus, out_path, key_path, db_path, tenant_name, master_key_file, engine, ray_address, workers, batch_size,
         id_field, text_field, alpha, min_tokens, progress, model_path):
    """Detect every text of CORPUS (.jsonl, .csv, .parquet, or a folder of .txt files) with a key
    file, or with every key of a registry tenant, and write one row per text: id, verdict,
    p-value, key, payload, record (registry scans), tokens scored. An interrupted scan started
    again with the same --out skips the texts it finished.

    Example:

    \b
        provmark scan corpus.jsonl --key key.json --out results.parquet
        provmark scan texts/ --db registry.db --tenant acme --out results.csv --engine ray
    """
    from provmark.scan import ScanOptions, read_corpus, registry_lookup, scan_corpus

    db_path = _db_default(db_path, key_path)
    if (key_path is None) == (db_path is None):
        raise ParameterError("give --key FILE or --db PATH --tenant NAME (every key of a tenant), not both")
    options = ScanOptions(engine=engine, workers=workers, batch_size=batch_size, alpha=alpha, min_tokens=min_tokens,
                          model_path=model_path, ray_address=ray_address, progress=progress)
    lookup = None
    if key_path is not None:
        if tenant_name:
            raise ParameterError("--tenant applies to registry scans: add --db PATH, or drop it")
        from provmark.watermark.keys import load_key

        keys = [load_key(key_path)]
    else:
        if tenant_name is None:
            raise ParameterError("a registry scan uses one tenant's keys: give --tenant NAME")
        registry = _registry(db_path, master_key_file, need_master_key=True)
        keys = [registry.watermark_key(k.key_id) for k in registry.key_refs(registry.tenant(tenant_name).id)]
        if not keys:
            raise ParameterError(f"tenant {tenant_name} has no keys")
        lookup = registry_lookup(registry)
    table = read_corpus(corpus, id_field=id_field, text_field=text_field)
    _quiet_libraries()
    summary = scan_corpus(table, out_path, keys, options, record_lookup=lookup)
    plural = "s" if len(keys) > 1 else ""
    click.echo(f"scanned {summary.texts} texts ({summary.scanned} in this run) with {len(keys)} key{plural}: "
               f"{summary.watermarked} watermarked; {out_path} ({summary.scanned / max(summary.seconds, 1e-9):.1f} "
               f"texts/s, {engine} engine)")


def main():  # console-script entry point
    cli(prog_name="provmark")


if __name__ == "__main__":
    sys.exit(main())
