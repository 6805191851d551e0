"""The rules of an election, pinned in its creation event and never changed afterwards."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar

from domain.errors import InvalidBallot, InvalidElection, InvalidRequest

E = TypeVar("E", bound=StrEnum)

OPTION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MAX_OPTIONS = 100
MAX_TITLE = 200
MAX_LABEL = 200
MAX_SCORE_MAGNITUDE = 1000
MAX_SCORE_LEVELS = 101
# A ranked tally keeps one counter per distinct ranking, keyed by the ranking's option ids
# in order (``r:A>B>C``, domain/tabulation/counters.py), in an indexed column whose keys
# PostgreSQL caps at about 2,700 bytes. A ranked election whose full ranking would make a
# longer key is refused at creation, not left with ballots its tally could not count.
MAX_RANKING_KEY = 2000
# Live results advance in whole steps of this many counted ballot entries unless the
# election asks otherwise (see domain/publication.py); 1 means exact live results.
DEFAULT_LIVE_RESULTS_STEP = 10
MAX_LIVE_RESULTS_STEP = 1_000_000
# C0 controls, DEL, C1 controls, and UTF-16 surrogates (a lone one can only come from a
# broken encoder).
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


class Method(StrEnum):
    """The tabulation methods Cardinal Vote accepts ballots for."""

    PLURALITY = "plurality"
    APPROVAL = "approval"
    SCORE = "score"
    STAR = "star"
    BORDA = "borda"
    IRV = "irv"
    SCHULZE = "schulze"
    RANKED_PAIRS = "ranked_pairs"
    COPELAND = "copeland"
    MINIMAX = "minimax"
    STV = "stv"  # multi-seat: Scottish STV (domain/tabulation/stv.py)

    @property
    def ballot_field(self) -> str:
        """The one ballot field a voter fills in for this method."""
        return _BALLOT_FIELD[self]

    @property
    def is_ranked(self) -> bool:
        return self.ballot_field == "ranking"

    @property
    def is_scored(self) -> bool:
        return self.ballot_field == "scores"


_BALLOT_FIELD = {
    Method.PLURALITY: "choice",
    Method.APPROVAL: "approve",
    Method.SCORE: "scores",
    Method.STAR: "scores",
    **dict.fromkeys(
        (
            Method.BORDA,
            Method.IRV,
            Method.SCHULZE,
            Method.RANKED_PAIRS,
            Method.COPELAND,
            Method.MINIMAX,
            Method.STV,
        ),
        "ranking",
    ),
}

# Published defaults: STAR Voting uses 0..5 stars; Cardinal Vote's score ballots use -2..+2.
DEFAULT_SCORE_RANGE = {Method.SCORE: (-2, 2), Method.STAR: (0, 5)}


class Eligibility(StrEnum):
    CLIENT = "client"  # the API client asserts a voter id per ballot
    TOKENS = "tokens"  # each voter presents a one-time voter token


class ResultsVisibility(StrEnum):
    LIVE = "live"
    AFTER_CLOSE = "after_close"


COUNTING_EDITION = 2  # of new elections; see ElectionRules.counting

# Bidi embedding, override and isolate controls (U+202A-U+202E, U+2066-U+2069): invisible,
# they make one name look like another, or two byte strings of one name. Other format
# characters stay: ZWNJ and ZWJ (U+200C, U+200D) belong to correct spellings in Persian,
# Indic scripts and emoji.
_BIDI_CONTROLS = re.compile("[\u202a-\u202e\u2066-\u2069]")


class VoterIds(StrEnum):
    """How a client election tells one voter id from another (the rule is pinned).

    EXACT (elections created before 2026-12-06): as the client sent it, code point for
    code point, so "José" in NFC and in NFD are two voters. NFC (every election created
    since): normalised to Unicode NFC first, so they are one; and a voter id that starts
    or ends with whitespace, or holds a bidi embedding, override or isolate control, is
    refused rather than taken as another voter's.
    """

    EXACT = "exact"
    NFC = "nfc"

    def identity(self, voter_id: str) -> str:
        """The text a voter's credential is derived from; InvalidBallot (field voter_id)
        for a voter id this rule refuses."""
        if self is VoterIds.EXACT:
            return voter_id
        normal = unicodedata.normalize("NFC", voter_id)
        if normal != normal.strip():
            raise InvalidBallot(
                "voter_id starts or ends with whitespace: send the voter id without it "
                '("ada", not "ada "); in this election voter ids are compared after '
                "Unicode NFC normalisation, and surrounding spaces would name another voter",
                field="voter_id",
            )
        found = _BIDI_CONTROLS.search(normal)
        if found is not None:
            raise InvalidBallot(
                f"voter_id contains a bidirectional text control (U+{ord(found.group()):04X}) "
                f"at index {found.start()}: remove it (embedding, override and isolate "
                "controls, U+202A-U+202E and U+2066-U+2069, are invisible and would make "
                "one voter id look like another)",
                field="voter_id",
            )
        return normal


VOTER_IDS = VoterIds.NFC  # of new elections; see ElectionRules.voter_ids


class TieBreak(StrEnum):
    """What decides a tie for the win once the method's own published tie-breaks are spent.

    The method's own steps always apply first (STAR: head-to-head, then total score, then
    most top scores; IRV eliminations: previous-round counts, then, under DECLARED_ORDER or
    in counting edition 1, declared option order; under REPORT in edition 2, every choice).
    """

    REPORT = "report"  # leave the tie: every tied option is a winner, and the result says why
    DECLARED_ORDER = "declared_order"  # the option declared earlier on the ballot wins


@dataclass(frozen=True, slots=True)
class Option:
    id: str
    label: str


@dataclass(frozen=True)
class ElectionRules:
    """Everything that decides how ballots are validated and counted."""

    options: tuple[Option, ...]
    method: Method
    min_score: int | None = None
    max_score: int | None = None
    eligibility: Eligibility = Eligibility.CLIENT
    allow_revote: bool = True
    results_visibility: ResultsVisibility = ResultsVisibility.LIVE
    tie_break: TieBreak = TieBreak.REPORT
    live_results_step: int = DEFAULT_LIVE_RESULTS_STEP
    late_tokens: bool = False
    public_results: bool = False  # results readable without a token (still as visibility says)
    seats: int | None = None  # stv only (1 <= seats < options): how many options are elected
    # The edition of the counting rules the election was created under, pinned so that no
    # upgrade changes a result already served. Edition 2 (IRV elections from 2026-12-06):
    # under REPORT, where no earlier round separates the options tied for the fewest votes,
    # every option that wins for some choice of elimination is a winner. Edition 1: the
    # option declared last was eliminated, and the count went on.
    counting: int = 1
    # How voter ids are compared (client elections), pinned so that no upgrade makes a
    # voter who already cast a new voter: see VoterIds. Stored rules without it: EXACT.
    voter_ids: VoterIds = VoterIds.EXACT
    # Derived once: validation and tabulation look these up for every ballot.
    option_ids: tuple[str, ...] = field(init=False, repr=False, compare=False)
    option_index: Mapping[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "option_ids", tuple(option.id for option in self.options))
        object.__setattr__(
            self, "option_index", {option.id: i for i, option in enumerate(self.options)}
        )

    @classmethod
    def create(
        cls,
        *,
        options: Sequence[Mapping[str, Any]] | Sequence[Option],
        method: str,
        min_score: int | None = None,
        max_score: int | None = None,
        eligibility: str = Eligibility.CLIENT,
        allow_revote: bool = True,
        results_visibility: str = ResultsVisibility.LIVE,
        tie_break: str = TieBreak.REPORT,
        live_results_step: int = DEFAULT_LIVE_RESULTS_STEP,
        late_tokens: bool = False,
        public_results: bool = False,
        seats: int | None = None,
    ) -> ElectionRules:
        """Validate raw rules (as an API client sends them) and pin them."""
        chosen = _enum(Method, method, "method")
        parsed_options = _parse_options(options)
        if chosen.is_ranked:
            _check_ranking_key(parsed_options)
        low, high = DEFAULT_SCORE_RANGE.get(chosen, (0, 0))
        if chosen.is_scored:
            low = low if min_score is None else _int(min_score, "min_score")
            high = high if max_score is None else _int(max_score, "max_score")
            if low >= high:
                raise InvalidElection(
                    f"min_score ({low}) must be lower than max_score ({high})",
                    field="max_score",
                )
            if max(abs(low), abs(high)) > MAX_SCORE_MAGNITUDE:
                raise InvalidElection(
                    f"scores must lie within -{MAX_SCORE_MAGNITUDE}..{MAX_SCORE_MAGNITUDE}",
                    field="min_score" if abs(low) > MAX_SCORE_MAGNITUDE else "max_score",
                )
            if high - low + 1 > MAX_SCORE_LEVELS:
                raise InvalidElection(
                    f"a score range may have at most {MAX_SCORE_LEVELS} levels; "
                    f"{low}..{high} has {high - low + 1}",
                    field="max_score",
                )
        else:
            for name, value in (("min_score", min_score), ("max_score", max_score)):
                if value is not None:
                    raise InvalidElection(
                        f"{name} applies to score and STAR elections only, not {chosen.value}",
                        field=name,
                    )
        for name, flag in (
            ("allow_revote", allow_revote),
            ("late_tokens", late_tokens),
            ("public_results", public_results),
        ):
            if not isinstance(flag, bool):
                raise InvalidElection(f"{name} must be true or false", field=name)
        step = _int(live_results_step, "live_results_step")
        if not 1 <= step <= MAX_LIVE_RESULTS_STEP:
            raise InvalidElection(
                f"live_results_step must be from 1 (exact live results) to "
                f"{MAX_LIVE_RESULTS_STEP}; got {step}",
                field="live_results_step",
            )
        scored = chosen.is_scored
        pinned_seats = _seats(chosen, seats, len(parsed_options))
        return cls(
            options=parsed_options,
            method=chosen,
            min_score=low if scored else None,
            max_score=high if scored else None,
            eligibility=_enum(Eligibility, eligibility, "eligibility"),
            allow_revote=allow_revote,
            results_visibility=_enum(ResultsVisibility, results_visibility, "results_visibility"),
            tie_break=_enum(TieBreak, tie_break, "tie_break"),
            live_results_step=step,
            late_tokens=late_tokens,
            public_results=public_results,
            seats=pinned_seats,
            counting=COUNTING_EDITION if chosen is Method.IRV else 1,
            voter_ids=VOTER_IDS,
        )

    def to_json(self) -> dict[str, Any]:
        """The rules as stored in the election's creation event."""
        pinned: dict[str, Any] = {
            "options": [{"id": o.id, "label": o.label} for o in self.options],
            "method": self.method.value,
            "min_score": self.min_score,
            "max_score": self.max_score,
            "eligibility": self.eligibility.value,
            "allow_revote": self.allow_revote,
            "results_visibility": self.results_visibility.value,
            "tie_break": self.tie_break.value,
            "live_results_step": self.live_results_step,
            "late_tokens": self.late_tokens,
            "public_results": self.public_results,
        }
        if self.seats is not None:
            # Only stv elections pin seats: other methods' stored rules stay as they were.
            pinned["seats"] = self.seats
        if self.counting != 1:
            pinned["counting"] = self.counting
        if self.voter_ids is not VoterIds.EXACT:
            # Rules stored before the field stay as they were, and compare exactly.
            pinned["voter_ids"] = self.voter_ids.value
        return pinned

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ElectionRules:
        """Rebuild pinned rules from a stored creation event (trusted input)."""
        return cls(
            options=tuple(Option(o["id"], o["label"]) for o in data["options"]),
            method=Method(data["method"]),
            min_score=data.get("min_score"),
            max_score=data.get("max_score"),
            eligibility=Eligibility(data["eligibility"]),
            allow_revote=bool(data["allow_revote"]),
            results_visibility=ResultsVisibility(data["results_visibility"]),
            tie_break=TieBreak(data.get("tie_break", TieBreak.REPORT.value)),
            # Elections created before these rules existed had exact live results, and
            # took voter tokens until the close: what they pinned stays what they get.
            live_results_step=int(data.get("live_results_step", 1)),
            late_tokens=bool(data.get("late_tokens", True)),
            # Results were never public before this rule: stored rules without it stay so.
            public_results=bool(data.get("public_results", False)),
            # An stv election stored without seats (none is, but a hand-made log may be)
            # fills one seat, the default at creation.
            seats=(int(data.get("seats") or 1) if data["method"] == Method.STV.value else None),
            # Rules stored before the editions were counted by the first.
            counting=int(data.get("counting", 1)),
            # Rules stored before voter ids were normalised compared them exactly.
            voter_ids=_voter_ids(data.get("voter_ids", VoterIds.EXACT.value)),
        )


# A rule that was on main for an hour on 2026-12-06 and was withdrawn: "nfc_strict" (NFC,
# with more characters refused). Every id it took is NFC and is the same voter under NFC,
# so an election created then reads as NFC rather than failing to load.
_WITHDRAWN_VOTER_IDS = {"nfc_strict": VoterIds.NFC}


def _voter_ids(stored: str) -> VoterIds:
    return _WITHDRAWN_VOTER_IDS.get(stored) or VoterIds(stored)


def _enum(kind: type[E], value: object, name: str) -> E:
    try:
        if not isinstance(value, str):
            raise ValueError(value)
        return kind(value)
    except ValueError:
        allowed = ", ".join(m.value for m in kind)
        raise InvalidElection(
            f"{name} must be one of {allowed}; got {value!r}", field=name
        ) from None


def _int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidElection(f"{name} must be an integer; got {value!r}", field=name)
    return value


def _seats(method: Method, seats: object, options: int) -> int | None:
    """The pinned number of seats: stv only, 1 by default, fewer than the options."""
    if method is not Method.STV:
        if seats is not None:
            raise InvalidElection(
                f"seats applies to stv only (multi-seat elections), not {method.value}",
                field="seats",
            )
        return None
    if seats is None:
        return 1
    count = _int(seats, "seats")
    if not 1 <= count < options:
        raise InvalidElection(
            f"seats must be from 1 to one fewer than the number of options ({options - 1}); "
            f"got {count}",
            field="seats",
        )
    return count


def _parse_options(raw: object) -> tuple[Option, ...]:
    if not isinstance(raw, Sequence) or isinstance(raw, str):
        raise InvalidElection("options must be a list of {id, label} objects", field="options")
    if not 2 <= len(raw) <= MAX_OPTIONS:
        raise InvalidElection(
            f"an election needs between 2 and {MAX_OPTIONS} options; got {len(raw)}",
            field="options",
        )
    options: list[Option] = []
    seen: set[str] = set()
    for i, item in enumerate(raw):
        where = f"options[{i}]"
        option_id: object
        label: object
        if isinstance(item, Option):
            option_id, label = item.id, item.label
        elif isinstance(item, Mapping):
            option_id, label = item.get("id"), item.get("label")
        else:
            raise InvalidElection(f"{where} must be an object with id and label", field=where)
        if not isinstance(option_id, str) or not OPTION_ID.match(option_id):
            raise InvalidElection(
                f"{where}.id must be 1-64 letters, digits, '_', '.' or '-', starting with a "
                f"letter or digit; got {option_id!r}",
                field=f"{where}.id",
            )
        if option_id in seen:
            raise InvalidElection(
                f"option id {option_id!r} appears more than once", field=f"{where}.id"
            )
        if not isinstance(label, str) or _blank(label) or len(label) > MAX_LABEL:
            raise InvalidElection(
                f"{where}.label must be a non-empty text of at most {MAX_LABEL} characters",
                field=f"{where}.label",
            )
        plain_text(label, f"{where}.label")
        seen.add(option_id)
        options.append(Option(option_id, label.strip()))
    return tuple(options)


def _check_ranking_key(options: Sequence[Option]) -> None:
    joined = sum(len(option.id) for option in options) + len(options) - 1
    if joined > MAX_RANKING_KEY:
        raise InvalidElection(
            f"a ranked election's option ids, joined with one character between each two, "
            f"may be at most {MAX_RANKING_KEY:,} characters long (each ranking is counted "
            f"under its ids in order); these make {joined:,}: use shorter ids",
            field="options",
        )


def validate_title(title: object) -> str:
    """An election's title: non-empty text, at most MAX_TITLE characters."""
    if not isinstance(title, str) or _blank(title):
        raise InvalidElection("title must be a non-empty text", field="title")
    plain_text(title, "title")
    if len(title) > MAX_TITLE:
        raise InvalidElection(
            f"title may have at most {MAX_TITLE} characters; got {len(title)}", field="title"
        )
    return title.strip()


def _blank(text: str) -> bool:
    """Nothing a reader would see: spaces, and format characters such as U+200B or U+FEFF."""
    return all(c.isspace() or unicodedata.category(c) == "Cf" for c in text)


def plain_text(value: str, field: str) -> str:
    """``value`` if it holds no control character (U+0000-U+001F, U+007F-U+009F) and no
    lone surrogate; InvalidRequest naming ``field`` otherwise.

    Such characters have no place in a title, a label or an id, and some (NUL) cannot even
    be stored by the read models: refused at the door, they never reach the log.
    """
    found = _UNPRINTABLE.search(value)
    if found is not None:
        code = ord(found.group())
        kind = "a lone surrogate" if 0xD800 <= code <= 0xDFFF else "a control character"
        raise InvalidRequest(
            f"{field} contains {kind} (U+{code:04X}) at index {found.start()}; "
            "use printable text only",
            field=field,
        )
    return value
