from __future__ import annotations

import pytest

from domain.errors import InvalidElection, InvalidRequest
from domain.rules import (
    MAX_RANKING_KEY,
    ElectionRules,
    Method,
    TieBreak,
    VoterIds,
    validate_title,
)

OPTIONS = [{"id": "a", "label": "A"}, {"id": "b", "label": "B"}]


def test_defaults_follow_published_practice() -> None:
    assert ElectionRules.create(options=OPTIONS, method="star").min_score == 0
    assert ElectionRules.create(options=OPTIONS, method="star").max_score == 5
    score = ElectionRules.create(options=OPTIONS, method="score")
    assert (score.min_score, score.max_score) == (-2, 2)
    plurality = ElectionRules.create(options=OPTIONS, method="plurality")
    assert plurality.min_score is None
    assert plurality.tie_break is TieBreak.REPORT


def test_rules_round_trip_through_their_stored_form() -> None:
    rules = ElectionRules.create(
        options=OPTIONS,
        method="score",
        min_score=-5,
        max_score=5,
        eligibility="tokens",
        allow_revote=False,
        results_visibility="after_close",
        tie_break="declared_order",
    )
    assert ElectionRules.from_json(rules.to_json()) == rules
    assert rules.option_index == {"a": 0, "b": 1}


@pytest.mark.parametrize("method", [m.value for m in Method])
def test_every_method_has_a_ballot_field(method: str) -> None:
    rules = ElectionRules.create(options=OPTIONS, method=method)
    assert rules.method.ballot_field in ("choice", "approve", "scores", "ranking")


LONG_IDS = [{"id": f"{n:02d}" + "x" * 62, "label": f"Option {n}"} for n in range(31)]


def test_a_ranked_election_refuses_option_ids_too_long_to_count_every_ranking() -> None:
    # 31 ids of 64 characters, joined: 2,014 characters, over the 2,000 a ranking key
    # may take (PostgreSQL indexes keys of up to about 2,700 bytes).
    with pytest.raises(InvalidElection, match="these make 2,014: use shorter ids") as raised:
        ElectionRules.create(options=LONG_IDS, method="irv")
    assert raised.value.field == "options"
    fits = ElectionRules.create(options=LONG_IDS[:30], method="schulze")  # 1,949
    assert len(fits.options) == 30
    # Other methods keep no ranking keys: the same ids are fine.
    assert len(ElectionRules.create(options=LONG_IDS, method="approval").options) == 31
    assert MAX_RANKING_KEY == 2000
    for method in (m for m in Method if m.is_ranked):
        with pytest.raises(InvalidElection, match="use shorter ids"):
            ElectionRules.create(options=LONG_IDS, method=method.value)


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"method": "dictator"}, "method", "method must be one of"),
        ({"options": []}, "options", "between 2 and 100"),
        ({"options": [{"id": "a", "label": "A"}] * 2}, "options[1].id", "more than once"),
        ({"options": [{"id": "a b", "label": "A"}, *OPTIONS]}, "options[0].id", "1-64 letters"),
        ({"options": [{"id": "a", "label": ""}, OPTIONS[1]]}, "options[0].label", "non-empty"),
        ({"options": "ab"}, "options", "must be a list"),
        ({"method": "score", "min_score": 2, "max_score": 2}, "max_score", "must be lower"),
        ({"method": "score", "max_score": 5000}, "max_score", "within -1000..1000"),
        ({"method": "score", "min_score": 0, "max_score": 200}, "max_score", "101 levels"),
        ({"method": "plurality", "max_score": 3}, "max_score", "score and STAR elections"),
        ({"eligibility": "anyone"}, "eligibility", "client, tokens"),
        ({"results_visibility": "never"}, "results_visibility", "live, after_close"),
        ({"tie_break": "coin"}, "tie_break", "report, declared_order"),
        ({"allow_revote": "yes"}, "allow_revote", "true or false"),
    ],
)
def test_invalid_rules_name_the_field(changes: dict[str, object], field: str, message: str) -> None:
    arguments: dict[str, object] = {"options": OPTIONS, "method": "plurality", **changes}
    with pytest.raises(InvalidElection, match=message) as raised:
        ElectionRules.create(**arguments)  # type: ignore[arg-type]
    assert raised.value.field == field


@pytest.mark.parametrize("text", ["a\u0085b", "\u009b31m", "x\u0080"])
def test_c1_control_characters_are_refused(text: str) -> None:
    """C1 controls (U+0080-U+009F) passed where C0 ones were refused (review helper-41)."""
    with pytest.raises(InvalidRequest, match="a control character"):
        validate_title(text)
    with pytest.raises(InvalidRequest, match="a control character"):
        ElectionRules.create(
            options=[{"id": "a", "label": text}, {"id": "b", "label": "B"}], method="plurality"
        )


@pytest.mark.parametrize("text", ["\u200b", "\ufeff\u200b", " \u2060 "])
def test_a_title_or_label_of_invisible_characters_is_empty(text: str) -> None:
    with pytest.raises(InvalidRequest, match="non-empty"):
        validate_title(text)
    with pytest.raises(InvalidRequest, match="non-empty"):
        ElectionRules.create(
            options=[{"id": "a", "label": text}, {"id": "b", "label": "B"}], method="plurality"
        )


THREE = [{"id": "a", "label": "A"}, {"id": "b", "label": "B"}, {"id": "c", "label": "C"}]


def test_stv_pins_its_seats_and_defaults_to_one() -> None:
    assert ElectionRules.create(options=THREE, method="stv").seats == 1
    rules = ElectionRules.create(options=THREE, method="stv", seats=2)
    assert rules.seats == 2
    assert rules.to_json()["seats"] == 2
    assert ElectionRules.from_json(rules.to_json()) == rules
    assert "seats" not in ElectionRules.create(options=THREE, method="irv").to_json()


def test_stored_rules_without_seats_still_load() -> None:
    stored = ElectionRules.create(options=THREE, method="stv", seats=2).to_json()
    del stored["seats"]
    assert ElectionRules.from_json(stored).seats == 1
    irv = ElectionRules.create(options=THREE, method="irv").to_json()
    assert ElectionRules.from_json(irv).seats is None


@pytest.mark.parametrize(
    ("method", "seats", "message"),
    [
        ("irv", 2, "seats applies to stv only"),
        ("plurality", 1, "seats applies to stv only"),
        ("stv", 0, "seats must be from 1 to one fewer than the number of options (2)"),
        ("stv", 3, "seats must be from 1 to one fewer than the number of options (2)"),
        ("stv", "2", "seats must be an integer"),
        ("stv", True, "seats must be an integer"),
    ],
)
def test_bad_seats_are_refused(method: str, seats: object, message: str) -> None:
    with pytest.raises(InvalidElection, match=message.replace("(", r"\(").replace(")", r"\)")) as e:
        ElectionRules.create(options=THREE, method=method, seats=seats)  # type: ignore[arg-type]
    assert e.value.field == "seats"


def test_new_elections_pin_nfc_voter_ids_and_stored_rules_without_it_stay_exact() -> None:
    """Rules stored before the field compare voter ids exactly, as they did when their
    voters cast (normalising them now would make an NFD voter a new voter)."""
    created = ElectionRules.create(options=OPTIONS, method="plurality")
    assert created.voter_ids is VoterIds.NFC
    assert created.to_json()["voter_ids"] == "nfc"
    assert ElectionRules.from_json(created.to_json()) == created
    stored = {k: v for k, v in created.to_json().items() if k != "voter_ids"}
    earlier = ElectionRules.from_json(stored)
    assert earlier.voter_ids is VoterIds.EXACT
    assert earlier.to_json() == stored  # and stored again as it was
    assert earlier.voter_ids.identity("Jose\u0301") == "Jose\u0301"
    assert earlier.voter_ids.identity("ada ") == "ada "


def test_rules_pinned_with_the_withdrawn_nfc_strict_load_as_nfc() -> None:
    """ "nfc_strict" was pinned by elections created while it was on main (an hour, then
    withdrawn): reading one failed ('not a valid VoterIds'), so its election answered 500
    everywhere and left the overview (the dashboards' review). Every id it took is NFC
    text, the same voter under NFC."""
    created = ElectionRules.create(options=OPTIONS, method="plurality")
    stored = {**created.to_json(), "voter_ids": "nfc_strict"}
    assert ElectionRules.from_json(stored).voter_ids is VoterIds.NFC


def test_nfc_voter_ids_are_normalised_and_refused_with_a_reason() -> None:
    rule = VoterIds.NFC
    assert rule.identity("Jose\u0301") == rule.identity("Jos\u00e9") == "Jos\u00e9"
    assert rule.identity("\u1100\u1161") == "\uac00"  # Hangul jamo compose, too
    for kept in ("a\u200cb", "a\u200db", "\u200e\u05d0", "ada lovelace"):
        assert rule.identity(kept) == kept  # other format characters are spellings
    for spaced in ("ada ", " ada", "ada\t", "\u00a0ada", "ada\u3000", " "):
        with pytest.raises(InvalidRequest, match="starts or ends with whitespace") as found:
            rule.identity(spaced)
        assert found.value.field == "voter_id"
    for code in (*range(0x202A, 0x202F), *range(0x2066, 0x206A)):
        with pytest.raises(InvalidRequest, match=f"U\\+{code:04X}") as found:
            rule.identity(f"a{chr(code)}b")
        assert found.value.field == "voter_id"
