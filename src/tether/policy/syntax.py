"""Where a Cedar parse error is: line, column and the offending text.

cedarpy reports a parse error by its message alone (``unexpected token `}```, ``invalid token``),
without a position. This module finds the position by asking the same parser again: the text is
split into tokens (a small lexer for Cedar's lexical grammar: identifiers, numbers, strings,
``//`` comments, operators) and into policies (at each top-level ``;``); the first policy that
does not parse alone is the one at fault, and within it the shortest run of whole tokens that
fails other than by ending early ends with the offending token. A parser that has not failed yet
only ever lacks more input, so that token is exactly where parsing went wrong. Errors found after
parsing (an unknown effect, a bad escape, a repeated annotation) have no such token; for those the
text the message quotes is looked for in the failing policy, else the policy's start is given.

Pure: no I/O. Only run when a set was already refused, and bounded (:data:`MAX_PARSE_CHARS`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

__all__ = ["MAX_PARSE_CHARS", "Location", "Token", "locate_parse_error", "tokens"]

#: How much text (summed over the parses) locating one error may hand the parser.
MAX_PARSE_CHARS: Final = 8 * 1024 * 1024
_EXCERPT_CHARS: Final = 60
_END_OF_INPUT: Final = "unexpected end of input"
_PARSER_MESSAGES: Final = ("unexpected token", "invalid token", "unrecognized token")
_TOKEN: Final = re.compile(
    r"""
      (?P<space>\s+)
    | (?P<comment>//[^\n]*)
    | (?P<string>"(?:\\.|[^"\\])*"?)
    | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
    | (?P<number>[0-9]+)
    | (?P<op>::|==|!=|<=|>=|&&|\|\||.)
    """,
    re.VERBOSE | re.DOTALL,
)
_UNEXPECTED: Final = re.compile(r"unexpected token `([^`]+)`")
# What a message quotes: `x`, 'x', or the tail after ": " (``invalid policy effect: permi``).
_QUOTED: Final = re.compile(r"`([^`]+)`|'([^']+)'|:\s+(\S+)$")


@dataclass(frozen=True, slots=True)
class Token:
    """One token: its text and where it starts and ends (character offsets)."""

    text: str
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Location:
    """Where a parse error is: 1-based line and column, and the text found there."""

    line: int
    column: int
    text: str


def tokens(text: str) -> list[Token]:
    """Cedar's tokens in ``text`` (whitespace and comments dropped). An unterminated string runs
    to the end of the text; any other unknown character is a token of its own."""
    found: list[Token] = []
    for match in _TOKEN.finditer(text):
        if match.lastgroup not in {"space", "comment"}:
            found.append(Token(match.group(), match.start(), match.end()))
    return found


def _position(text: str, offset: int) -> tuple[int, int]:
    line = text.count("\n", 0, offset) + 1
    return line, offset - (text.rfind("\n", 0, offset) + 1) + 1


def _excerpt(fragment: str) -> str:
    first = fragment.splitlines()[0] if fragment.strip() else fragment
    return first if len(first) <= _EXCERPT_CHARS else first[: _EXCERPT_CHARS - 1] + "…"


def _policies(all_tokens: list[Token]) -> list[list[Token]]:
    """The tokens of each policy: runs ending with a top-level ``;`` (the last may not end so)."""
    policies: list[list[Token]] = [[]]
    depth = 0
    for token in all_tokens:
        policies[-1].append(token)
        if token.text in {"(", "[", "{"}:
            depth += 1
        elif token.text in {")", "]", "}"}:
            depth = max(depth - 1, 0)
        elif token.text == ";" and depth == 0:
            policies.append([])
    return [policy for policy in policies if policy]


def locate_parse_error(text: str, parse_error: Callable[[str], str | None]) -> Location | None:
    """Where parsing ``text`` fails.

    Args:
        text: the policy text that failed to parse.
        parse_error: the parser's message for a text, or None if it parses.

    Returns:
        The location, or None if it cannot be found within the bounds.
    """
    budget = MAX_PARSE_CHARS

    def fails(fragment: str) -> str | None:
        nonlocal budget
        budget -= len(fragment)
        if budget < 0:
            raise _BudgetSpentError
        return parse_error(fragment)

    try:
        return _locate(text, fails)
    except _BudgetSpentError:
        return None


class _BudgetSpentError(Exception):
    pass


def _locate(text: str, fails: Callable[[str], str | None]) -> Location | None:
    for policy in _policies(tokens(text)):
        begin, end = policy[0].start, policy[-1].end
        message = fails(text[begin:end])
        if message is None:
            continue
        for index, token in enumerate(policy):
            found = fails(text[begin : token.end])
            if found is None or found == _END_OF_INPUT:
                continue
            if token is not policy[-1] or found.startswith(_PARSER_MESSAGES):
                culprit = _named(policy[: index + 1], found) or token
                return Location(*_position(text, culprit.start), _excerpt(culprit.text))
            break  # found once the policy is whole: not one token's fault
        if message == _END_OF_INPUT:
            return Location(*_position(text, end), "end of input")
        return _quoted(text, begin, end, message) or Location(
            *_position(text, begin), _excerpt(text[begin:end])
        )
    return None


def _named(run: list[Token], message: str) -> Token | None:
    """The last token of ``run`` that ``message`` names (``unexpected token `}```). The parser
    recovers from some errors and goes on, so the run can end a little after the culprit."""
    match = _UNEXPECTED.match(message)
    if match is None:
        return None
    return next((token for token in reversed(run) if token.text == match.group(1)), None)


def _quoted(text: str, begin: int, end: int, message: str) -> Location | None:
    """The first place in ``text[begin:end]`` holding what ``message`` quotes."""
    for match in _QUOTED.finditer(message):
        quoted = next(group for group in match.groups() if group)
        at = text.find(quoted, begin, end)
        if at >= 0:
            return Location(*_position(text, at), _excerpt(quoted))
    return None
