"""Ballot nonces come from a pool filled by one read of the OS's CSPRNG per 256 nonces
(domain/ballot.py): each is 128 bits, none repeats, not across threads and not across a
fork, where parent and child would otherwise hand out the same bytes."""

from __future__ import annotations

import os
import threading

from domain.ballot import _NoncePool, new_nonce


def test_nonces_are_128_bit_hex_and_never_repeat_across_refills() -> None:
    nonces = [new_nonce() for _ in range(3 * _NoncePool.COUNT + 7)]
    assert all(len(n) == 32 and int(n, 16) >= 0 for n in nonces)
    assert len(set(nonces)) == len(nonces)


def test_threads_taking_nonces_at_once_get_distinct_ones() -> None:
    pool = _NoncePool()
    taken: list[list[str]] = [[] for _ in range(4)]

    def take(into: list[str]) -> None:
        for _ in range(2_000):
            into.append(pool.take())

    threads = [threading.Thread(target=take, args=(t,)) for t in taken]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [n for t in taken for n in t]
    assert len(every) == 8_000
    assert len(set(every)) == 8_000


def test_a_forked_child_does_not_hand_out_its_parents_nonces() -> None:
    new_nonce()  # the pool holds nonces not yet handed out, which the child inherits
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover (the child reports through the pipe)
        os.write(write, "".join(new_nonce() for _ in range(8)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        theirs = pipe.read()
    os.waitpid(child, 0)
    ours = "".join(new_nonce() for _ in range(8))
    assert len(theirs) == len(ours) == 8 * 32
    assert {theirs[i : i + 32] for i in range(0, 256, 32)}.isdisjoint(
        {ours[i : i + 32] for i in range(0, 256, 32)}
    )
