"""Step-at-a-time decoding for serving: mixed rows in one batch, each watermarked as ``generate`` would."""

import warnings

import pytest

from provmark.detector import create_detector
from provmark.errors import ParameterError
from provmark.watermark.hook import generate
from provmark.watermark.keys import create_key
from provmark.watermark.streaming import BatchDecoder, RowRequest, TextStream

MPAC = create_key("mpac", {"bits": 8, "delta": 4.0}, secret=bytes(range(32)))
KGW = create_key("kgw", {"gamma": 0.25, "delta": 4.0}, secret=bytes(range(1, 33)))


def _decode(model, rows, pad_id=2):
    decoder = BatchDecoder(model, rows, stop_ids=[], pad_id=pad_id)
    out = [[] for _ in rows]
    while not decoder.done:
        for row, token in enumerate(decoder.step()):
            if token is not None:
                out[row].append(token)
    return out


def test_greedy_decoding_gives_the_ids_of_hook_generate(tiny_model, tokenizer):
    prompt = tokenizer("The lighthouse keeper", add_special_tokens=False)["input_ids"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # generate's do_sample=False warning
        (expected,) = generate(tiny_model, tokenizer, [tokenizer.decode(prompt)], MPAC, [77], chat=False,
                               do_sample=False, max_new_tokens=12)
    (ids,) = _decode(tiny_model, [RowRequest(prompt_ids=tuple(prompt), key=MPAC, payload=77, max_new_tokens=12,
                                             temperature=0)], pad_id=tokenizer.pad_token_id)
    assert tuple(ids) == expected.token_ids


def test_rows_of_different_keys_and_payloads_in_one_batch_each_carry_their_own_mark(tiny_model):
    rows = [
        RowRequest(prompt_ids=(5, 6, 7), key=MPAC, payload=201, max_new_tokens=64, seed=1),
        RowRequest(prompt_ids=(9, 10, 11, 12, 13, 14), key=KGW, max_new_tokens=64, seed=2),
        RowRequest(prompt_ids=(5, 6), key=MPAC, payload=17, max_new_tokens=64, seed=3, top_p=0.9),
        RowRequest(prompt_ids=(8, 9, 10), key=None, max_new_tokens=64, seed=4),
    ]
    out = _decode(tiny_model, rows)
    mpac, kgw = create_detector(MPAC), create_detector(KGW)
    results = [mpac.detect(out[0], prompt_ids=list(rows[0].prompt_ids)),
               kgw.detect(out[1], prompt_ids=list(rows[1].prompt_ids)),
               mpac.detect(out[2], prompt_ids=list(rows[2].prompt_ids))]
    assert all(r.is_watermarked for r in results), results
    assert (results[0].payload, results[2].payload) == (201, 17)
    assert not kgw.detect(out[3]).is_watermarked and not mpac.detect(out[3]).is_watermarked


def test_a_seeded_row_samples_the_same_ids_alone_or_beside_others(tiny_model):
    row = RowRequest(prompt_ids=(5, 6, 7), key=MPAC, payload=3, max_new_tokens=12, seed=42)
    (alone,) = _decode(tiny_model, [row])
    beside = _decode(tiny_model, [RowRequest(prompt_ids=(1, 2, 3, 4, 5, 6), key=KGW, max_new_tokens=12), row])
    assert beside[1] == alone


@pytest.mark.parametrize("late_prompt", [(1, 2), (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12)])
def test_a_row_that_joins_a_running_batch_samples_what_it_would_alone(tiny_model, late_prompt):
    # The short prompt joins behind the running row's padding; the long one pads the running row further.
    early = RowRequest(prompt_ids=(5, 6, 7), key=MPAC, payload=3, max_new_tokens=10, seed=42)
    late = RowRequest(prompt_ids=late_prompt, key=KGW, max_new_tokens=5, seed=7)
    (early_alone,), (late_alone,) = _decode(tiny_model, [early]), _decode(tiny_model, [late])
    decoder = BatchDecoder(tiny_model, [early], stop_ids=[], pad_id=2)
    out = {0: [], 1: []}
    for step in range(10):
        if step == 3:
            assert decoder.join([late]) == [1]
        for handle, token in enumerate(decoder.step()):
            if token is not None:
                out[handle].append(token)
    assert decoder.done and out[0] == early_alone and out[1] == late_alone


def test_rows_end_at_their_own_length_or_stop_id_and_finish_stops_a_row(tiny_model):
    rows = [RowRequest(prompt_ids=(5, 6, 7), key=MPAC, payload=1, max_new_tokens=n, seed=0) for n in (3, 9, 9)]
    decoder = BatchDecoder(tiny_model, rows, stop_ids=[], pad_id=2)
    first = decoder.step()
    decoder.finish(2)
    steps = 1
    while not decoder.done:
        sampled = decoder.step()
        assert sampled[2] is None
        steps += 1
    assert steps == 9 and decoder.num_tokens == [3, 9, 1]
    # A stop id ends its row after it is returned.
    stop = first[0]
    decoder = BatchDecoder(tiny_model, rows[:1], stop_ids=[stop], pad_id=2)
    assert decoder.step() == [stop] and decoder.done


def test_bad_rows_are_refused():
    with pytest.raises(ParameterError, match="max_new_tokens"):
        RowRequest(prompt_ids=(1,), key=None, max_new_tokens=0)
    with pytest.raises(ParameterError, match="top_p"):
        RowRequest(prompt_ids=(1,), key=None, top_p=0)
    with pytest.raises(ParameterError, match="prompt_ids"):
        RowRequest(prompt_ids=(), key=None)


def _stream(tokenizer, text, stop=()):
    stream = TextStream(tokenizer, stop)
    pieces = [stream.push(i) for i in tokenizer(text, add_special_tokens=False)["input_ids"]]
    pieces.append(stream.close())
    return stream, pieces


def test_text_pieces_join_to_the_decoded_text_and_never_split_a_character(tokenizer):
    text = "Tides rise 🌊 twice a day — façade, naïve, 東京."
    stream, pieces = _stream(tokenizer, text)
    assert "".join(pieces) == stream.text == tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"])
    assert all("\ufffd" not in p for p in pieces)


def test_a_stop_string_ends_the_text_before_it_and_is_never_sent_in_part(tokenizer):
    stream, pieces = _stream(tokenizer, "The answer is 42.\nUser: and then more", stop=["\nUser:"])
    assert stream.stopped and stream.text == "The answer is 42." == "".join(pieces)
    assert not any(p.endswith("\n") for p in pieces)
    held, pieces = _stream(tokenizer, "no stop here, only Use", stop=["User:"])
    assert not held.stopped and "".join(pieces) == "no stop here, only Use"
