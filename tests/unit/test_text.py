"""Complete characters only, and stop strings that never leak, however the text is split into tokens."""

from __future__ import annotations

import pytest

from inference.engine.text import REPLACEMENT_CHAR, StopStrings, StreamingDetokenizer, Utf8Stream


def test_it_emits_a_multibyte_character_only_when_complete():
    stream = Utf8Stream()
    data = "é€😀".encode()
    out = [stream.feed(data[i : i + 1]) for i in range(len(data))]
    assert "".join(out) == "é€😀"
    assert all(piece in ("", "é", "€", "😀") for piece in out)


def test_a_nul_a_model_emits_becomes_the_replacement_character_so_every_copy_of_the_reply_is_the_same():
    vocabulary = {1: "a", 2: "\x00", 3: "b"}
    stream = StreamingDetokenizer(lambda ids: "".join(vocabulary[i] for i in ids))
    assert [stream.add(i) for i in (1, 2, 3)] == ["a", REPLACEMENT_CHAR, "b"]


@pytest.mark.parametrize(
    ("pieces", "stops", "emitted", "stopped"),
    [
        (["Hello", " wor", "ld"], ["world"], "Hello ", True),
        (["a", "b", "<", "/", "s", ">", "tail"], ["</s>"], "ab", True),
        (["no stop", " here"], ["STOP"], "no stop here", False),
        (["x<", "y"], ["<z"], "x<y", False),
        (["ab", "cd"], ["bc", "cd"], "a", True),
        (["line one\n", "\nline two"], ["\n\n"], "line one", True),
    ],
)
def test_it_cuts_at_the_first_stop_string_across_token_boundaries(pieces, stops, emitted, stopped):
    filter_ = StopStrings(stops)
    out, hit = [], False
    for piece in pieces:
        text, hit = filter_.feed(piece)
        out.append(text)
        if hit:
            break
    if not hit:
        out.append(filter_.flush())
    assert "".join(out) == emitted
    assert hit is stopped


def test_it_holds_back_only_what_could_start_a_stop_string():
    filter_ = StopStrings(["###"])
    assert filter_.feed("abc#") == ("abc", False)
    assert filter_.feed("#x") == ("##x", False)


def test_it_names_the_stop_string_found_first_in_the_text():
    filter_ = StopStrings(["END", "Q:"])
    assert filter_.matched is None
    assert filter_.feed("answer Q: more END") == ("answer ", True)
    assert filter_.matched == "Q:"
