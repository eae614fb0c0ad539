"""The leak guard: no injected secret comes back to the agent through the upstream's answer.

An upstream that echoes what it received (a debug endpoint, an error page quoting the request,
a hostile or compromised service) would hand the agent the very secret the proxy injected.
The guard knows the secret and what was injected (``Bearer <secret>``, basic ``user:secret``,
a query value) and redacts, in the response headers and body, every occurrence of:

- the value itself, and each injected rendering of it;
- base64 (standard and URL-safe, with and without padding), and the base64 of the value
  embedded at any offset in a larger base64 text (the three alignments);
- percent-encoding (as ``quote`` and ``quote_plus`` produce it, and every byte escaped),
  with upper- or lowercase hex digits;
- hex, lower- and uppercase;
- a JSON string escape of it.

Each occurrence becomes ``[REDACTED]``. Streaming works across chunk boundaries: the
:class:`StreamRedactor` holds back the last ``longest form - 1`` bytes until the next chunk or
the end, so its output is byte-for-byte what redacting the whole body at once would give.

Limits: it finds these encodings, not every transformation. An upstream that reverses, splits,
XORs, compresses or re-encodes the secret another way defeats it; the guard catches reflection
and casual exfiltration, and every catch is an audit event. Very short secrets are redacted
only in their direct forms (a few bytes would match too much by chance). Pure: no I/O.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from urllib.parse import quote, quote_plus

__all__ = ["REDACTED", "LeakGuard", "StreamRedactor", "forget_guards", "guard_for", "secret_forms"]

REDACTED = b"[REDACTED]"
#: Below this many bytes, a value's partial (offset-aligned) base64 forms are not used: they
#: would be a handful of characters, common in any text.
MIN_ALIGNED_BYTES = 6
MIN_ALIGNED_CHARS = 8


def _percent_all(value: bytes, upper: bool) -> bytes:
    digits = "%{:02X}" if upper else "%{:02x}"
    return "".join(digits.format(byte) for byte in value).encode("ascii")


def _lower_escapes(text: str) -> str:
    return re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), text)


def _aligned_base64(value: bytes) -> list[bytes]:
    """The part of ``base64(prefix + value + suffix)`` that depends on ``value`` alone, for each
    of the three prefix lengths mod 3 (standard alphabet; the caller adds the URL-safe one)."""
    if len(value) < MIN_ALIGNED_BYTES:
        return []
    forms = []
    for offset in range(3):
        encoded = base64.b64encode(bytes(offset) + value)
        start = -(-8 * offset // 6)  # ceil: the first character with no prefix bits
        end = 8 * (offset + len(value)) // 6  # the last character with no suffix bits (exclusive)
        middle = encoded[start:end]
        if len(middle) >= MIN_ALIGNED_CHARS:
            forms.append(middle)
    return forms


def _forms_of(value: bytes) -> set[bytes]:
    forms = {value}
    for encoded in (base64.b64encode(value), *_aligned_base64(value)):
        forms.add(encoded)
        forms.add(encoded.rstrip(b"="))
        urlsafe = encoded.translate(bytes.maketrans(b"+/", b"-_"))
        forms.add(urlsafe)
        forms.add(urlsafe.rstrip(b"="))
    hexed = value.hex()
    forms.update({hexed.encode("ascii"), hexed.upper().encode("ascii")})
    for text in (quote(value, safe=""), quote(value), quote_plus(value, safe="")):
        forms.update({text.encode("ascii"), _lower_escapes(text).encode("ascii")})
    forms.update({_percent_all(value, upper=True), _percent_all(value, upper=False)})
    try:
        text_value = value.decode("utf-8")
    except UnicodeDecodeError:
        pass
    else:
        for ensure_ascii in (True, False):
            escaped = json.dumps(text_value, ensure_ascii=ensure_ascii)[1:-1]
            forms.add(escaped.encode("utf-8"))
    return forms


def secret_forms(secret: bytes, renderings: Iterable[bytes] = ()) -> frozenset[bytes]:
    """Every form the guard redacts, for ``secret`` and what was injected (``renderings``,
    e.g. ``b"Bearer <secret>"``, ``b"user:<secret>"``). Empty values are ignored."""
    forms: set[bytes] = set()
    for value in (secret, *renderings):
        if value:
            forms |= _forms_of(value)
    forms.discard(b"")
    return frozenset(forms)


class LeakGuard:
    """Redacts one secret's forms. Build one per forwarded request; share it across threads
    freely (it holds no state besides the compiled pattern)."""

    __slots__ = ("_pattern", "max_form_bytes")

    def __init__(self, secret: bytes, renderings: Iterable[bytes] = ()) -> None:
        forms = secret_forms(secret, renderings)
        if not forms:
            raise ValueError("the leak guard needs a non-empty secret")
        # Longest first: at each position the alternation takes the longest form that matches.
        ordered = sorted(forms, key=lambda form: (-len(form), form))
        self._pattern = re.compile(b"|".join(re.escape(form) for form in ordered))
        self.max_form_bytes = len(ordered[0])

    def __repr__(self) -> str:  # never the forms
        return f"LeakGuard(max_form_bytes={self.max_form_bytes})"

    def redact(self, data: bytes) -> tuple[bytes, int]:
        """``data`` with every form replaced by ``[REDACTED]``, and how many were replaced."""
        result, count = self._pattern.subn(REDACTED, data)
        return result, count

    def stream(self) -> StreamRedactor:
        """A redactor for one body that arrives in chunks."""
        return StreamRedactor(self._pattern, self.max_form_bytes)


#: Guards kept for reuse (each holds one secret's compiled forms), per process.
MAX_GUARDS = 256
_guards: OrderedDict[bytes, LeakGuard] = OrderedDict()
_guards_lock = threading.Lock()


def guard_for(secret: bytes, renderings: Sequence[bytes] = ()) -> LeakGuard:
    """The guard for ``secret`` and ``renderings``, built once and reused while the same value is
    injected (building one derives every form and compiles them: more than the rest of a forward).

    Kept by a digest of the inputs in a bounded LRU, so a rotated secret's guard ages out; the
    compiled patterns hold the value's forms in memory as any guard in use does, and
    :func:`forget_guards` drops them (on seal)."""
    digest = hashlib.sha256()
    for part in (secret, *renderings):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    key = digest.digest()
    with _guards_lock:
        guard = _guards.get(key)
        if guard is not None:
            _guards.move_to_end(key)
            return guard
    guard = LeakGuard(secret, renderings)
    with _guards_lock:
        _guards[key] = guard
        while len(_guards) > MAX_GUARDS:
            _guards.popitem(last=False)
    return guard


def forget_guards() -> None:
    """Drop every kept guard, and the ``re`` module's cache of compiled patterns (which holds the
    forms too): nothing derived from a secret value stays in memory once Tether is sealed."""
    with _guards_lock:
        _guards.clear()
    re.purge()


class StreamRedactor:
    """Redacts a body chunk by chunk, holding back at most ``max_form_bytes - 1`` bytes.

    ``feed`` returns what can be sent now; ``finish`` returns the rest. ``count`` is the number
    of redactions so far.
    """

    __slots__ = ("_hold", "_pattern", "_tail", "count")

    def __init__(self, pattern: re.Pattern[bytes], max_form_bytes: int) -> None:
        self._pattern = pattern
        self._hold = max_form_bytes - 1
        self._tail = b""
        self.count = 0

    def _emit(self, buffer: bytes, safe: int) -> bytes:
        # A form starting before ``safe`` ends within ``buffer`` (no form is longer than
        # ``hold + 1``), so every match decided here is the one the whole body would give.
        out: list[bytes] = []
        position = 0
        for match in self._pattern.finditer(buffer):
            if match.start() >= safe:
                break
            out.append(buffer[position : match.start()])
            out.append(REDACTED)
            position = match.end()
            self.count += 1
        keep_from = max(position, safe)
        out.append(buffer[position:keep_from])
        self._tail = buffer[keep_from:]
        return b"".join(out)

    def feed(self, chunk: bytes) -> bytes:
        """Take the next chunk; return the redacted bytes that are final."""
        buffer = self._tail + chunk
        return self._emit(buffer, len(buffer) - self._hold)

    def finish(self) -> bytes:
        """The redacted remainder, at the end of the body."""
        buffer, self._tail = self._tail, b""
        return self._emit(buffer, len(buffer))
