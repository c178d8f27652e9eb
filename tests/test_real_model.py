"""The embedded model: offline loading, the conversion cache, and a round trip (slow tests)."""

import json

import pytest

from provmark.detector import create_detector
from provmark.watermark.hook import generate
from provmark.watermark.keys import create_key
from provmark.watermark.models import DEFAULT_MODEL_NAME, _converted_default, format_prompts, load_model

pytestmark = pytest.mark.slow


def test_first_load_converts_the_gguf_file_once_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PROVMARK_CACHE_DIR", str(tmp_path))
    folder = _converted_default(tmp_path)
    assert folder.parent == tmp_path and (folder / "model.safetensors").is_file()
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config and config["vocab_size"] == 49152
    stamp = (folder / "config.json").stat().st_mtime_ns
    assert _converted_default(tmp_path) == folder
    assert (folder / "config.json").stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]  # no scratch folder left behind
    loaded = load_model()
    assert loaded.name == DEFAULT_MODEL_NAME and loaded.tokenizer.padding_side == "left"


def test_chat_template_is_applied_by_default(tokenizer):
    (text,) = format_prompts(tokenizer, ["Hi"])
    assert text.startswith("<|im_start|>system") and text.endswith("<|im_start|>assistant\n")
    assert format_prompts(tokenizer, ["Hi"], chat=False) == ["Hi"]


def test_a_local_model_folder_loads_like_the_default(real_model, tmp_path):
    real_model.model.save_pretrained(tmp_path)
    real_model.tokenizer.save_pretrained(tmp_path)
    other = load_model(tmp_path)
    assert other.name == str(tmp_path) and other.model.config.vocab_size == 49152


def test_missing_model_folder_is_a_clear_error(tmp_path):
    from provmark.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="model folder not found"):
        load_model(tmp_path / "absent")


def test_batched_round_trip_through_the_embedded_model(real_model):
    key = create_key("kgw", secret=bytes(range(32)))
    prompts = ["Write a short story about a fox.", "Explain how a bicycle gear works."]
    kwargs = {"seed": 0, "max_new_tokens": 150, "min_new_tokens": 150}
    marked = generate(real_model.model, real_model.tokenizer, prompts, key, **kwargs)
    plain = generate(real_model.model, real_model.tokenizer, prompts, None, **kwargs)
    detector = create_detector(key)
    retokenised = lambda g: real_model.tokenizer(g.text, add_special_tokens=False)["input_ids"]  # noqa: E731
    assert all(detector.detect(retokenised(g)).p_value < 1e-6 for g in marked)
    assert all(not detector.detect(retokenised(g)).is_watermarked for g in plain)
