"""strictjson: JSON from outside the process, refused before it can crash or poison a reader."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from avatar_sdk import strictjson


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("NaN", "NaN is not a JSON number"),
        ('{"exp": Infinity}', "Infinity is not a JSON number"),
        ('{"exp": -Infinity}', "-Infinity is not a JSON number"),
        ('{"exp": 1e400}', "too large"),
        ('{"exp": ' + "9" * 500 + "}", "too large"),
        ("[" * 8000, "nested 8000 levels deep"),
        ('{"a": ' + "[" * 40 + "]" * 40 + "}", "nested 41 levels deep"),
        ("{oops", "not JSON"),
        (b"\xff\xfe", "not UTF-8"),
    ],
)
def test_what_is_refused_and_why(text: str | bytes, why: str) -> None:
    with pytest.raises(strictjson.JSONRefused, match=why):
        strictjson.loads(text)


def test_brackets_inside_strings_do_not_count() -> None:
    assert strictjson.loads('{"a": "[[[[[[[[[[\\"]]]]"}', max_depth=1) == {"a": '[[[[[[[[[["]]]]'}


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=20,
)


@given(JSON)
def test_whatever_json_dumps_writes_reads_back(value: object) -> None:
    import json

    assert strictjson.loads(json.dumps(value)) == value
