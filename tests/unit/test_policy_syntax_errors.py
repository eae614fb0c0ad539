"""Cedar syntax errors say where: line, column and the offending text (cedarpy gives none)."""

from __future__ import annotations

import pytest

from tether.policy import compile as policy_compile
from tether.policy import syntax
from tether.policy.compile import PolicyValidationError, compile_policy_set
from tether.policy.syntax import MAX_PARSE_CHARS, Location, locate_parse_error, tokens


def _refusal(text: str) -> str:
    with pytest.raises(PolicyValidationError) as refused:
        compile_policy_set(text)
    (message,) = refused.value.messages
    return message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '@id("a")\npermit(principal, action, resource);\n\n@id("b")\nforbid(principal, action resource);',
            "policies do not parse: line 5, column 26: unexpected token `resource` (at `resource`)",
        ),
        (
            '@id("a")\npermit(principal, action, resource)\n  when { context.uses == };',
            "policies do not parse: line 3, column 26: unexpected token `}` (at `}`)",
        ),
        (
            '@id("a")\npermit(principal, action, resource)\n  when { context.mode == "inject };',
            'policies do not parse: line 3, column 26: invalid token (at `"inject };`)',
        ),
        (
            '@id("a")\npermit(principal, action, resource) when { context.uses # 1 };',
            "policies do not parse: line 2, column 57: invalid token (at `#`)",
        ),
        (
            '@id("a")\npermit(principal, action, resource)',
            "policies do not parse: line 2, column 36: unexpected end of input (at `end of input`)",
        ),
        (
            '@id("a")\npermit(principal, action, resource);\n@id("b")\npermi(principal, action, resource);',
            "policies do not parse: line 4, column 1: invalid policy effect: permi (at `permi`)",
        ),
        (
            '@id("a")\npermit(principal, action, resource) when { context.uses = 1 };',
            "policies do not parse: line 2, column 57: '=' is not a valid operator in Cedar (at `=`)",
        ),
    ],
)
def test_syntax_error_names_line_column_and_offending_text(text: str, expected: str) -> None:
    assert _refusal(text) == expected


def test_error_after_a_policy_that_parses_points_into_the_failing_one() -> None:
    text = (
        '// deploys\n@id("deploy")\npermit(principal, action == Action::"open_task", resource)\n'
        '  when { context.task.purpose == "deploy" };\n\n'
        '@id("broken")\nforbid(principal, action, resource)\n  when { [1, 2 };\n'
    )
    assert _refusal(text) == "policies do not parse: line 8, column 16: unexpected token `}` (at `}`)"


def test_offending_text_is_clipped() -> None:
    text = '@id("a")\npermit(principal, action, resource) when { "' + "x" * 500
    message = _refusal(text)
    assert message.startswith('policies do not parse: line 2, column 44: invalid token (at `"xxx')
    assert len(message) < 200


def test_tokens_skip_comments_and_keep_strings_whole() -> None:
    found = tokens('permit // a "comment"\n(principal == Agent::"a;b")')
    assert [t.text for t in found] == ["permit", "(", "principal", "==", "Agent", "::", '"a;b"', ")"]
    assert found[1].start == 22


def test_without_a_located_error_the_message_is_cedars_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(policy_compile, "locate_parse_error", lambda text, parse: None)
    assert _refusal("permit(") == "policies do not parse: unexpected end of input"


def test_locating_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(syntax, "MAX_PARSE_CHARS", 10_000)
    calls: list[int] = []

    def parse(fragment: str) -> str | None:
        calls.append(len(fragment))
        return "unexpected end of input"

    text = "permit(" + " x," * 2000
    assert locate_parse_error(text, parse) is None
    assert sum(calls[:-1]) <= 10_000
    assert MAX_PARSE_CHARS >= 1024 * 1024  # a whole policy set of the largest size, at least


def test_a_text_that_parses_has_no_error_location() -> None:
    assert locate_parse_error("permit(principal, action, resource);", lambda _: None) is None
    assert Location(1, 2, "x") == Location(1, 2, "x")
