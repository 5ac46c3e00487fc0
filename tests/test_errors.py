"""One error type for bad input that carries the field at fault (issue 30.3): each front end words
it in its own terms from the field (the CLI its flags, the API its JSON fields, the library its
parameter names), never by rewriting another front end's message."""

from __future__ import annotations

import pytest

from fgsearch.errors import FgsearchError, InputError


def test_input_error_names_its_field_in_each_front_ends_terms() -> None:
    template = "{filters.min_score} must be a finite number, got {got}"
    e = InputError(template, field="filters.min_score", got=float("nan"))
    assert isinstance(e, FgsearchError) and e.field == "filters.min_score" and e.fields == ("filters.min_score",)
    assert str(e) == "min_score must be a finite number, got nan"  # the library's parameter name
    assert e.worded(lambda f: "--min-score") == "--min-score must be a finite number, got nan"
    assert e.worded(lambda f: f) == "filters.min_score must be a finite number, got nan"


def test_every_field_named_and_the_primary_one_first() -> None:
    e = InputError("{box} needs {image}", field="box")
    assert e.fields == ("box", "image") and e.worded(str.upper) == "BOX needs IMAGE"
    steps = InputError("{field} must be at least 1", field="steps")
    assert steps.worded(lambda f: f"--{f}") == "--steps must be at least 1"


def test_a_callers_text_never_becomes_a_slot() -> None:
    e = InputError("{ext} {got!r} is not a file extension", field="ext", got="{image}")
    assert str(e) == "ext '{image}' is not a file extension" and e.fields == ("ext",)
    assert e.worded(lambda f: "--ext") == "--ext '{image}' is not a file extension"


def test_a_message_without_a_field_is_plain_text() -> None:
    e = InputError("box {1, 2} is odd")
    assert str(e) == "box {1, 2} is odd" and e.field is None and e.fields == ()
    assert e.worded(lambda f: "--x") == "box {1, 2} is odd"
    with pytest.raises(TypeError, match="values without a field"):
        InputError("{got}", got=1)
