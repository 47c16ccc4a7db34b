"""The decisions of the shared refresh protocol, as pure functions of token sets.

Every replica runs the same protocol against the shared store (file or Redis):

    take the lease → reload → after_reload():
        ADOPT    another replica (or a person) saved a newer set: use it, call nobody
        FORGET   the store holds no set: the connection was unlinked (revoked) elsewhere
        RESTORE  the store went back to an older set: write ours again, then refresh
        REFRESH  the store holds our set: renew it at the identity service
    → save with compare-and-set on the version → if refused, after_conflict() → release

Versions only grow: each save writes `version + 1` and succeeds only while the store still
holds the version it was based on. So a writer that fell behind (a stalled lease holder, a
refresh that raced a consent) can never replace a newer set. A newer set that holds the same
tokens (only the subscription key changed, or it was marked as refused) is merged with a
renewed set instead of replacing it: the renewed set holds the only refresh token that works.

The store is the truth: a replica never writes back a set the store no longer has.
"""

from __future__ import annotations

import enum

from proxy.oauth.token_set import TokenSet


class Step(enum.Enum):
    ADOPT = "adopt"  # use the stored set
    FORGET = "forget"  # the store has none: drop ours
    RESTORE = "restore"  # write our set again over an older one
    REFRESH = "refresh"  # the stored set is ours: renew it
    MERGE = "merge"  # write our renewed tokens with what else the newer stored set changed
    KEEP = "keep"  # the store already holds exactly our set


def is_newer(candidate: TokenSet | None, than: TokenSet | None) -> bool:
    """True when `candidate` was saved after `than` (anything beats nothing)."""
    if candidate is None:
        return False
    return than is None or candidate.version > than.version


def same_tokens(one: TokenSet | None, other: TokenSet | None) -> bool:
    """Whether both hold the same access and refresh token (other fields may differ)."""
    if one is None or other is None:
        return one is other
    return one.access_token == other.access_token and one.refresh_token == other.refresh_token


def after_reload(current: TokenSet | None, stored: TokenSet | None) -> Step:
    """What the lease holder does once it has reloaded the stored set."""
    if stored is None:
        return Step.REFRESH if current is None else Step.FORGET
    if is_newer(stored, current):
        return Step.ADOPT
    if current is not None and current.version > stored.version:
        return Step.RESTORE
    return Step.REFRESH


def after_conflict(ours: TokenSet, base: TokenSet | None, stored: TokenSet | None) -> Step:
    """A compare-and-set save of `ours` (made from `base`) was refused; `stored` is what the
    store holds now."""
    if stored == ours:
        return Step.KEEP  # an earlier attempt landed after all (its answer was lost)
    if stored is None:
        return Step.FORGET  # unlinked meanwhile
    if base is not None and same_tokens(stored, base) and not same_tokens(ours, base):
        return Step.MERGE  # only the key or a marker changed: our renewed tokens stay
    if stored.version < ours.version and (base is None or stored.version < base.version):
        return Step.RESTORE  # the store went back (lost writes): ours is still the newest
    return Step.ADOPT  # someone saved other tokens at least as new: theirs win


def changed_since(presented: TokenSet | None, stored: TokenSet | None) -> bool:
    """After a refusal (invalid_grant): did the store move on from the set we presented?

    Only an unchanged set means consent is really needed; one with other tokens was renewed
    or re-linked elsewhere while our request was in flight, and is simply adopted (as is a
    set another replica already marked as refused).
    """
    if stored is None:
        return False
    return not same_tokens(stored, presented) or stored.refused is not None
