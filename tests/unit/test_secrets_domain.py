"""Secret paths, sensitivity and metadata: the pure rules in ``tether.domain.secrets``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tether.domain.secrets import (
    MAX_PATH_LENGTH,
    MAX_PATH_SEGMENTS,
    SecretMetadata,
    SecretRecord,
    Sensitivity,
    validate_name_set,
    validate_path,
    validate_prefix,
)
from tether.errors import InvalidInputError

# -- validate_path ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "a",
        "prod/github/token",
        "Prod/GitHub/Token",
        "_internal/x",
        "team_1/db-2/pass.word",
        "a/b.",  # a dot inside or at the end of a segment is harmless
        "v1.2.3/x",
        "/".join(["s"] * MAX_PATH_SEGMENTS),
        "x" * 128,
        "/".join(["y" * 127] * 2),  # 255 characters
    ],
)
def test_validate_path_accepts_well_formed_paths(path: str) -> None:
    assert validate_path(path) == path


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("", "empty"),
        ("/prod/x", "leading slash"),
        ("prod/x/", "trailing slash"),
        ("prod//x", "double slash"),
        ("/", "only a slash"),
        (".", "dot segment"),
        ("..", "dot-dot segment"),
        ("prod/../x", "traversal"),
        ("prod/./x", "current-dir segment"),
        ("prod/.hidden", "hidden segment"),
        ("prod/-rf", "option-like segment"),
        ("-x", "option-like first segment"),
        ("prod/my secret", "space"),
        (" prod", "leading space"),
        ("prod/x\n", "trailing newline"),
        ("prod/x\t", "tab"),
        ("prod/caf\u00e9", "non-ASCII letter"),
        ("prod/\u0430dmin", "Cyrillic look-alike"),
        ("prod/\uff21", "fullwidth letter"),
        ("prod/%2e%2e/x", "percent-encoded dots"),
        ("prod/%2e", "percent-encoded dot"),
        ("prod\\x", "backslash"),
        ("prod/x\x00", "NUL"),
        ("prod/x:y", "colon"),
        ("prod/*", "glob"),
        ("x" * 129, "segment over 128 characters"),
        ("/".join(["y" * 128] * 2) + "/z", "over 256 characters"),
        ("/".join(["s"] * (MAX_PATH_SEGMENTS + 1)), "over 16 segments"),
    ],
)
def test_validate_path_refuses_malformed_paths(path: str, why: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        validate_path(path)
    assert caught.value.field == "path", why


def test_validate_path_refuses_a_path_just_over_the_length_limit() -> None:
    path = "/".join(["a" * 64] * 4) + "b"  # 260 characters in 4 valid segments
    assert len(path) > MAX_PATH_LENGTH
    with pytest.raises(InvalidInputError, match="longer than"):
        validate_path(path)


@pytest.mark.parametrize("value", [None, 42, b"prod/x", ["prod", "x"]])
def test_validate_path_refuses_non_strings(value: object) -> None:
    with pytest.raises(InvalidInputError):
        validate_path(value)  # type: ignore[arg-type]


_SEGMENT_START = "abcXYZ019_"
_SEGMENT_REST = _SEGMENT_START + ".-"


@given(
    st.lists(
        st.text(alphabet="abcXYZ019_.-/\\% é", min_size=0, max_size=8),
        min_size=1,
        max_size=MAX_PATH_SEGMENTS + 2,
    ).map("/".join)
)
def test_accepted_paths_have_no_traversal_or_empty_segment_and_round_trip(path: str) -> None:
    try:
        validate_path(path)
    except InvalidInputError:
        return
    segments = path.split("/")
    assert "" not in segments
    assert ".." not in segments
    assert "." not in segments
    assert all(not s.startswith((".", "-")) for s in segments)
    assert all(c.isascii() and (c.isalnum() or c in "._-") for c in path.replace("/", ""))
    assert "/".join(segments) == path
    assert len(segments) <= MAX_PATH_SEGMENTS
    assert len(path) <= MAX_PATH_LENGTH


@given(
    st.lists(
        st.builds(
            str.__add__,
            st.sampled_from(_SEGMENT_START),
            st.text(alphabet=_SEGMENT_REST, max_size=10),
        ),
        min_size=1,
        max_size=MAX_PATH_SEGMENTS,
    )
)
def test_paths_built_from_valid_segments_are_accepted(segments: list[str]) -> None:
    path = "/".join(segments)
    assert validate_path(path) == path
    assert path.split("/") == segments


# -- validate_prefix ---------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["", "prod", "prod/", "prod/db/"])
def test_validate_prefix_accepts_empty_or_path_with_optional_trailing_slash(prefix: str) -> None:
    assert validate_prefix(prefix) == prefix


@pytest.mark.parametrize("prefix", ["/", "/prod", "prod//", "../", "prod/%", "prod/_%"])
def test_validate_prefix_refuses_malformed_prefixes(prefix: str) -> None:
    with pytest.raises(InvalidInputError):
        validate_prefix(prefix)


# -- Sensitivity -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("public", Sensitivity.PUBLIC),
        ("internal", Sensitivity.INTERNAL),
        ("confidential", Sensitivity.CONFIDENTIAL),
        ("restricted", Sensitivity.RESTRICTED),
        ("RESTRICTED", Sensitivity.RESTRICTED),
        (" Internal ", Sensitivity.INTERNAL),
        (0, Sensitivity.PUBLIC),
        (3, Sensitivity.RESTRICTED),
    ],
)
def test_sensitivity_parse_accepts_names_and_numbers(value: str | int, expected: Sensitivity) -> None:
    assert Sensitivity.parse(value) is expected


@pytest.mark.parametrize("value", ["secret", "", "3", "restrict", 4, -1, True, False, 2.0, None])
def test_sensitivity_parse_refuses_unknown_values(value: object) -> None:
    with pytest.raises(InvalidInputError) as caught:
        Sensitivity.parse(value)  # type: ignore[arg-type]
    assert caught.value.field == "sensitivity"


def test_sensitivity_levels_are_ordered_numbers_with_lowercase_labels() -> None:
    assert [int(s) for s in Sensitivity] == [0, 1, 2, 3]
    assert Sensitivity.PUBLIC < Sensitivity.INTERNAL < Sensitivity.CONFIDENTIAL < Sensitivity.RESTRICTED
    assert [s.label for s in Sensitivity] == ["public", "internal", "confidential", "restricted"]


# -- SecretMetadata ----------------------------------------------------------------------------


def test_secret_metadata_defaults_to_confidential_and_empty_sets() -> None:
    metadata = SecretMetadata()
    assert metadata.sensitivity is Sensitivity.CONFIDENTIAL
    assert metadata.purposes == frozenset()
    assert metadata.destinations == frozenset()
    assert metadata.rotation_period_seconds is None


def test_secret_metadata_normalises_sensitivity_names_and_lists() -> None:
    metadata = SecretMetadata(
        sensitivity="restricted",  # type: ignore[arg-type]
        purposes=["deploy", "deploy", "incident"],  # type: ignore[arg-type]
        destinations=("github",),  # type: ignore[arg-type]
    )
    assert metadata.sensitivity is Sensitivity.RESTRICTED
    assert metadata.purposes == frozenset({"deploy", "incident"})
    assert metadata.destinations == frozenset({"github"})


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"sensitivity": "top-secret"}, "sensitivity"),
        ({"purposes": frozenset({"Deploy"})}, "purposes"),
        ({"purposes": frozenset({"has space"})}, "purposes"),
        ({"purposes": frozenset({""})}, "purposes"),
        ({"purposes": frozenset({"-x"})}, "purposes"),
        ({"purposes": frozenset({"x" * 65})}, "purposes"),
        ({"purposes": frozenset(f"p{i}" for i in range(65))}, "purposes"),
        ({"destinations": frozenset({"git hub"})}, "destinations"),
        ({"destinations": frozenset({"\u00e9"})}, "destinations"),
        ({"owner": "o" * 129}, "owner"),
        ({"rotation_period_seconds": 59}, "rotation_period_seconds"),
        ({"rotation_period_seconds": 0}, "rotation_period_seconds"),
        ({"rotation_period_seconds": -60}, "rotation_period_seconds"),
        ({"rotation_period_seconds": 10 * 365 * 86400 + 1}, "rotation_period_seconds"),
    ],
)
def test_secret_metadata_refuses_invalid_fields(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        SecretMetadata(**kwargs)  # type: ignore[arg-type]
    assert caught.value.field == field


def test_secret_metadata_accepts_boundary_values() -> None:
    metadata = SecretMetadata(
        purposes=frozenset(f"p{i}" for i in range(64)),
        owner="o" * 128,
        rotation_period_seconds=60,
    )
    assert len(metadata.purposes) == 64
    assert SecretMetadata(rotation_period_seconds=10 * 365 * 86400).rotation_period_seconds == 315_360_000


def test_validate_name_set_refuses_non_string_members() -> None:
    with pytest.raises(InvalidInputError):
        validate_name_set([1, "ok"], "purposes")  # type: ignore[list-item]


# -- SecretRecord -----------------------------------------------------------------------------


def _record(updated_at: datetime, period: int | None, deleted_at: datetime | None = None) -> SecretRecord:
    return SecretRecord(
        path="prod/x",
        metadata=SecretMetadata(rotation_period_seconds=period),
        current_version=1,
        created_at=updated_at,
        updated_at=updated_at,
        deleted_at=deleted_at,
    )


def test_rotation_is_due_once_the_period_has_elapsed() -> None:
    updated = datetime(2026, 1, 1, tzinfo=UTC)
    record = _record(updated, 3600)
    assert not record.rotation_due(updated + timedelta(seconds=3599))
    assert record.rotation_due(updated + timedelta(seconds=3600))


def test_rotation_is_never_due_without_a_period() -> None:
    updated = datetime(2026, 1, 1, tzinfo=UTC)
    assert not _record(updated, None).rotation_due(updated + timedelta(days=10_000))


def test_record_is_deleted_only_with_a_deletion_time() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert not _record(now, None).deleted
    assert _record(now, None, deleted_at=now).deleted
