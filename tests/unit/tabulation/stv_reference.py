"""An independent Scottish STV count (rules 45-52) for the tests, written apart from
domain/tabulation/stv.py after a reviewer's reference implementation: a plain loop over
papers, votes in integer units of 1/100000, and every lot drawn by ``chooser``.

``count`` returns the winners (in order of election), the votes of the continuing options
at the end of each stage, and whether a lot was drawn. ``outcomes`` draws every lot every
way and returns each set of winners that some way elects."""

from __future__ import annotations

from collections.abc import Callable, Sequence

UNIT = 100_000

Ballots = Sequence[tuple[tuple[int, ...], int]]
Chooser = Callable[[list[int]], int]


def _declared(kind: str) -> Chooser:
    # The declared-order rule: the earlier-declared surplus first, the later-declared out.
    return min if kind == "surplus" else max


def count(
    n: int, seats: int, ballots: Ballots, chooser: Callable[[str, list[int]], int] | None = None
) -> tuple[list[int], list[dict[int, int]], bool]:
    quota = (sum(c for _, c in ballots) // (seats + 1) + 1) * UNIT
    piles: dict[int, list[tuple[tuple[int, ...], int, int, int]]] = {c: [] for c in range(n)}
    for ranking, c in ballots:
        piles[ranking[0]].append((ranking, 0, c, UNIT))
    votes = {c: sum(p[2] * p[3] for p in piles[c]) for c in range(n)}
    elected: list[int] = []
    excluded: set[int] = set()
    pending: list[int] = []
    history: list[dict[int, int]] = []
    shown: list[dict[int, int]] = []
    lot = False

    def continuing() -> list[int]:
        return [c for c in range(n) if c not in excluded and c not in elected]

    def end_stage() -> None:
        cont = continuing()
        shown.append({c: votes[c] for c in cont})
        history.append(dict(votes))
        for c in sorted((c for c in cont if votes[c] >= quota), key=lambda c: (-votes[c], c)):
            if len(elected) < seats:
                elected.append(c)
                if votes[c] > quota:
                    pending.append(c)

    def look_back(tied: list[int], highest: bool) -> list[int]:
        for snapshot in reversed(history[:-1]):
            values = [snapshot[c] for c in tied]
            if len(set(values)) > 1:
                best = max(values) if highest else min(values)
                tied = [c for c in tied if snapshot[c] == best]
                if len(tied) == 1:
                    break
        return tied

    def transfer(source: int, value_of: Callable[[int], int]) -> None:
        for ranking, position, c, value in piles[source]:
            moved = value_of(value)
            nxt = next(
                (
                    j
                    for j in range(position + 1, len(ranking))
                    if ranking[j] not in excluded and ranking[j] not in elected
                ),
                None,
            )
            if nxt is not None:
                piles[ranking[nxt]].append((ranking, nxt, c, moved))
                votes[ranking[nxt]] += c * moved
        piles[source] = []

    end_stage()
    while len(elected) < seats:
        cont = continuing()
        if len(cont) <= seats - len(elected):  # rule 52
            elected.extend(sorted(cont, key=lambda c: (-votes[c], c)))
            break
        kind = "surplus" if pending else "exclusion"
        if pending:
            top = max(votes[c] for c in pending)
            tied = look_back([c for c in pending if votes[c] == top], highest=True)
        else:
            low = min(votes[c] for c in cont)
            tied = look_back([c for c in cont if votes[c] == low], highest=False)
        if len(tied) > 1:
            lot = True
            source = chooser(kind, sorted(tied)) if chooser else _declared(kind)(tied)
        else:
            source = tied[0]
        if pending:
            pending.remove(source)
            total = votes[source]

            def share(value: int, total: int = total) -> int:
                return (total - quota) * value // total

            transfer(source, share)
            votes[source] = quota
        else:
            excluded.add(source)
            if len(continuing()) > seats - len(elected):  # else rule 52: nothing moves
                transfer(source, lambda value: value)
            piles[source] = []
            votes[source] = 0
        end_stage()
    return elected, shown, lot


def outcomes(n: int, seats: int, ballots: Ballots) -> set[frozenset[int]]:
    """Every set of winners for some way of drawing every lot."""
    found: set[frozenset[int]] = set()
    stack: list[list[int]] = [[]]
    while stack:
        prefix = stack.pop()
        drawn: list[list[int]] = []

        def chooser(
            kind: str, tied: list[int], prefix: list[int] = prefix, drawn: list[list[int]] = drawn
        ) -> int:
            k = len(drawn)
            drawn.append(tied)
            return tied[prefix[k]] if k < len(prefix) else tied[0]

        winners, _, _ = count(n, seats, ballots, chooser)
        for k in range(len(prefix), len(drawn)):
            for other in range(1, len(drawn[k])):
                stack.append([*prefix, *[0] * (k - len(prefix)), other])
        found.add(frozenset(winners))
    return found
