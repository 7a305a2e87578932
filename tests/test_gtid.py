"""GTID set algebra: table-driven examples (real server text) and property tests."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hacontrol.gtid import (
    BinlogState,
    DivergedError,
    Flavor,
    GtidSet,
    behind,
    diverged_domains,
    empty,
    errant_by_state,
    format_gtids,
    is_at_least,
    parse,
    parse_binlog_state,
    parse_mariadb,
    parse_mysql,
    server_state,
    state_contains,
)

U1 = "3e11fa47-71ca-11e1-9e33-c80aa9429562"
U2 = "4e11fa47-71ca-11e1-9e33-c80aa9429562"
U3 = "896e7882-18fe-11ef-ab88-22222d34d411"


def ma(text: str) -> GtidSet:
    return parse(text, "mariadb")


def my(text: str) -> GtidSet:
    return parse(text, "mysql")


# -- parsing and formatting ----------------------------------------------------------------

# (text, flavor, count, canonical text)
PARSE_CASES = [
    ("", "mariadb", 0, ""),
    ("  \n ", "mariadb", 0, ""),
    ("0-1-5", "mariadb", 5, "0-1-5"),
    ("0-1-100,1-3-7", "mariadb", 107, "0-1-100,1-3-7"),
    (" 0-1-100 ,\n 1-3-7 ", "mariadb", 107, "0-1-100,1-3-7"),
    ("1-3-7,0-1-100", "mariadb", 107, "0-1-100,1-3-7"),
    # MariaDB 10.11 output after SET GLOBAL gtid_slave_pos='3-2-5,0-7-1,1-4-2' and writes in
    # domains 1, 2 and 10 (domains come back sorted numerically).
    ("0-7-1,1-7-3,2-7-1,3-2-5,10-7-1", "mariadb", 11, "0-7-1,1-7-3,2-7-1,3-2-5,10-7-1"),
    # Seq 0: the server accepts and reports gtid_slave_pos '0-1-0' (domain known, empty).
    ("0-1-0", "mariadb", 0, ""),
    ("0-1-0,1-2-3", "mariadb", 3, "1-2-3"),
    ("0-1-101..105", "mariadb", 5, "0-1-101..105"),
    ("0-1-7..7", "mariadb", 1, "0-1-7..7"),
    ("0-1-1..5:10..20", "mariadb", 16, "0-1-1..5:10..20"),
    ("0-1-10..20:1..5", "mariadb", 16, "0-1-1..5:10..20"),
    ("0-1-1..3:4..5", "mariadb", 5, "0-1-5"),
    ("0-1-1..100", "mariadb", 100, "0-1-100"),
    ("0-*-1..99", "mariadb", 99, "0-*-99"),
    ("0-*-5..9", "mariadb", 5, "0-*-5..9"),
    ("4294967295-4294967295-18446744073709551615", "mariadb", 2**64 - 1, None),
    ("", "mysql", 0, ""),
    (f"{U1.upper()}:1-5,\n{U2}:1-3:5", "mysql", 9, f"{U1}:1-5,{U2}:1-3:5"),
    (f"{U1}:1-3:4-5", "mysql", 5, f"{U1}:1-5"),
    (f"{U1}:7", "mysql", 1, f"{U1}:7"),
    (f"{U1}:7-9:1-2", "mysql", 5, f"{U1}:1-2:7-9"),
    (f"{U2}:1-10,{U1}:3", "mysql", 11, f"{U1}:3,{U2}:1-10"),
    (f"{U1}:1-3,{U1}:4-6", "mysql", 6, f"{U1}:1-6"),
    (f" {U1} : 1 - 3 : 5 ", "mysql", 4, f"{U1}:1-3:5"),
    # MySQL 9.1 echo of gtid_purged in bug #116789: the same set, grouped under one UUID.
    (
        f"{U1.upper()}:Domain_1:1-3:15-21,\n{U1.upper()}:Domain_2:8-52",
        "mysql",
        55,
        f"{U1}:domain_1:1-3:15-21:domain_2:8-52",
    ),
    (f"{U1}:domain_1:1-3:15-21:domain_2:8-52", "mysql", 55, None),
    # Tagged and untagged in one element, as in go-mysql's PreviousGTIDsEvent test.
    (f"{U3}:1-4:aaaa:1:abc:1-3:bbbbb:1:bbbbbb:1:x:1", "mysql", 11, None),
    (f"{U3}:TAG:1-3", "mysql", 3, f"{U3}:tag:1-3"),
    (f"{U3}:_{'a' * 31}:1", "mysql", 1, None),
    (f"{U1}:1-9223372036854775807", "mysql", 2**63 - 1, None),
]


@pytest.mark.parametrize(("text", "flavor", "count", "canonical"), PARSE_CASES)
def test_parse_examples(text: str, flavor: Flavor, count: int, canonical: str | None) -> None:
    gtids = parse(text, flavor)
    assert gtids.flavor == flavor
    assert gtids.count() == count
    assert bool(gtids) == (count > 0)
    assert gtids.is_empty() == (count == 0)
    expected = text if canonical is None else canonical
    assert format_gtids(gtids) == expected
    assert str(gtids) == expected
    assert parse(expected, flavor) == gtids


def test_flavor_specific_parsers_match_parse() -> None:
    assert parse_mariadb("0-1-5") == parse("0-1-5", "mariadb")
    assert parse_mysql(f"{U1}:1-5") == parse(f"{U1}:1-5", "mysql")


def test_mariadb_entry_fields() -> None:
    gtids = ma("0-1-100,1-3-7")
    zero = gtids.entry(0)
    assert zero is not None
    assert (zero.intervals, zero.server_id, zero.last, zero.is_prefix) == (
        ((1, 100),),
        1,
        100,
        True,
    )
    assert gtids.entry(5) is None
    errant = ma("0-1-101..105").entry(0)
    assert errant is not None and not errant.is_prefix and errant.server_id == 1


def test_mysql_tags_are_separate_sources() -> None:
    gtids = my(f"{U1}:1-5:t1:1-3")
    assert gtids.entry((U1, "")) is not None
    tagged = gtids.entry((U1, "t1"))
    assert tagged is not None and tagged.intervals == ((1, 3),)
    assert not my(f"{U1}:1-3") <= my(f"{U1}:t1:1-3")
    assert my(f"{U1}:1-3") <= gtids


# (text, flavor, fragment the message must quote)
MALFORMED = [
    ("0-1", "mariadb", "0-1"),
    ("a-b-c", "mariadb", "a-b-c"),
    ("0-1-x", "mariadb", "0-1-x"),
    ("0-1-5,0-2-6", "mariadb", "0-1-5,0-2-6"),  # duplicate domain
    ("0-1-5,1-1-1,0-1-7", "mariadb", "0-1-5,1-1-1,0-1-7"),
    ("0-1-0,0-1-5", "mariadb", "0-1-0,0-1-5"),
    ("-1-1-5", "mariadb", "-1-1-5"),
    ("0--1-5", "mariadb", "0--1-5"),
    ("0-1--5", "mariadb", "0-1--5"),
    ("0-1-5-6", "mariadb", "0-1-5-6"),
    ("0-1-5,,1-2-3", "mariadb", "0-1-5,,1-2-3"),
    ("0-1-5,", "mariadb", "0-1-5,"),
    ("0 - 1 - 5", "mariadb", "0 - 1 - 5"),
    ("0-1-5..3", "mariadb", "0-1-5..3"),
    ("0-1-0..5", "mariadb", "0-1-0..5"),
    ("0-1-1..5:", "mariadb", "0-1-1..5:"),
    ("0-1-1..5:7", "mariadb", "0-1-1..5:7"),
    ("4294967296-1-5", "mariadb", "4294967296-1-5"),
    ("0-4294967296-5", "mariadb", "0-4294967296-5"),
    ("0-1-18446744073709551616", "mariadb", "0-1-18446744073709551616"),
    ("0-1-٣", "mariadb", "0-1-٣"),  # a non-ASCII digit
    (f"{U1}:1-5", "mariadb", f"{U1}:1-5"),
    (f"{U1}:5-3", "mysql", "5-3"),
    ("not-a-uuid:1-5", "mysql", "not-a-uuid"),
    (f"{U1[:-1]}:1-5", "mysql", U1[:-1]),
    (f"{U1}:0", "mysql", "0"),
    (f"{U1}:0-5", "mysql", "0-5"),
    (f"{U1}:-5", "mysql", "-5"),
    (f"{U1}:1-x", "mysql", "1-x"),
    (f"{U1}:1-5:", "mysql", f"{U1}:1-5:"),
    (U1, "mysql", U1),
    (f"{U1}:tag", "mysql", f"{U1}:tag"),
    (f"{U1}:t1:t2:1-3", "mysql", "t1"),
    (f"{U1}:1-3:9tag:1", "mysql", "9tag"),
    (f"{U1}:{'a' * 33}:1", "mysql", "a" * 33),
    (f"{U1}:1-9223372036854775808", "mysql", "1-9223372036854775808"),
    (f"{U1}:1-5,,{U2}:1", "mysql", f"{U1}:1-5,,{U2}:1"),
    ("0-1-5", "mysql", "0-1-5"),
]


@pytest.mark.parametrize(("text", "flavor", "fragment"), MALFORMED)
def test_malformed_input_raises_naming_the_text(text: str, flavor: Flavor, fragment: str) -> None:
    with pytest.raises(ValueError) as err:
        parse(text, flavor)
    message = str(err.value)
    assert repr(text) in message
    assert fragment in message


def test_unknown_flavor_is_rejected() -> None:
    with pytest.raises(ValueError, match="postgres"):
        parse("", "postgres")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="postgres"):
        empty("postgres")  # type: ignore[arg-type]


def test_build_normalizes_and_validates() -> None:
    built = GtidSet.build("mariadb", {0: [(4, 5), (1, 3)], 1: []}, {0: 9})
    assert built == ma("0-9-5")
    assert GtidSet.build("mysql", {(U1, ""): [(1, 2)]}) == my(f"{U1}:1-2")
    with pytest.raises(ValueError):
        GtidSet.build("mariadb", {0: [(0, 5)]})
    with pytest.raises(ValueError):
        GtidSet.build("mysql", {(U1.upper(), ""): [(1, 2)]})
    with pytest.raises(ValueError):
        GtidSet.build("mysql", {(U1, ""): [(1, 2)]}, {0: 1})


# -- algebra examples ----------------------------------------------------------------------

# (flavor, a, op, b, expected text)
ALGEBRA = [
    ("mariadb", "0-1-105", "-", "0-2-100", "0-1-101..105"),
    ("mariadb", "0-2-100", "-", "0-1-105", ""),
    ("mariadb", "0-1-100,1-3-7", "-", "0-1-100", "1-3-7"),
    ("mariadb", "0-1-100", "|", "1-3-7", "0-1-100,1-3-7"),
    ("mariadb", "0-1-100", "|", "0-2-105", "0-2-105"),
    ("mariadb", "0-1-100", "&", "0-2-105", "0-1-100"),
    ("mariadb", "0-1-101..105", "|", "0-1-100", "0-1-105"),
    ("mariadb", "0-1-1..5:10..20", "&", "0-1-3..12", "0-1-3..5:10..12"),
    ("mariadb", "0-1-1..5:10..20", "&", "0-1-3..12:30..40", "0-*-3..5:10..12"),
    ("mariadb", "0-1-1..5:10..20", "-", "0-1-3..12", "0-1-1..2:13..20"),
    ("mariadb", "0-1-100", "-", "0-1-100..100", "0-*-99"),
    ("mariadb", "0-*-5", "|", "0-3-5", "0-3-5"),
    ("mariadb", "0-*-5", "&", "0-3-5", "0-3-5"),
    ("mysql", f"{U1}:1-10", "-", f"{U1}:3-4:8", f"{U1}:1-2:5-7:9-10"),
    ("mysql", f"{U1}:1-10", "&", f"{U1}:3-4:8,{U2}:1", f"{U1}:3-4:8"),
    ("mysql", f"{U1}:1-3", "|", f"{U1}:4-6,{U2}:1", f"{U1}:1-6,{U2}:1"),
    ("mysql", f"{U1}:1-3:t:1-3", "-", f"{U1}:t:2", f"{U1}:1-3:t:1:3"),
]


@pytest.mark.parametrize(("flavor", "a", "op", "b", "expected"), ALGEBRA)
def test_algebra_examples(flavor: Flavor, a: str, op: str, b: str, expected: str) -> None:
    x, y = parse(a, flavor), parse(b, flavor)
    result = {"|": x | y, "-": x - y, "&": x & y}[op]
    assert format_gtids(result) == expected
    assert result == parse(expected, flavor)


# (flavor, a, b, b <= a, behind(a, b))
PROGRESS = [
    ("mariadb", "0-1-100", "0-1-100", True, 0),
    ("mariadb", "0-2-105", "0-1-100", True, 0),
    ("mariadb", "0-1-100", "0-2-105", False, 5),
    ("mariadb", "0-1-100,1-3-7", "0-1-90,1-3-9", False, 2),
    ("mariadb", "", "0-1-5", False, 5),
    ("mariadb", "0-1-5", "", True, 0),
    ("mysql", f"{U1}:1-100", f"{U1}:1-90", True, 0),
    ("mysql", f"{U1}:1-90", f"{U1}:1-100,{U2}:1-3", False, 13),
    ("mysql", f"{U1}:1-100:t:1", f"{U1}:1-100", True, 0),
]


@pytest.mark.parametrize(("flavor", "a", "b", "ahead", "lag"), PROGRESS)
def test_is_at_least_and_behind(flavor: Flavor, a: str, b: str, ahead: bool, lag: int) -> None:
    x, y = parse(a, flavor), parse(b, flavor)
    assert is_at_least(x, y) is ahead
    assert x.contains(y) is ahead
    assert (y <= x) is ahead
    assert (x >= y) is ahead
    assert behind(x, y) == lag


def test_strict_order_operators() -> None:
    assert ma("0-1-5") < ma("0-1-6")
    assert not ma("0-1-5") < ma("0-1-5")
    assert ma("0-1-6") > ma("0-1-5")


def test_sets_are_hashable_values() -> None:
    seen = {ma("0-1-5"), ma("0-1-1..5"), my(f"{U1}:1-5"), my(f"{U1.upper()}:1-3:4-5")}
    assert len(seen) == 2
    assert ma("0-1-5") != my(f"{U1}:1-5")
    assert empty("mariadb") == ma("") and empty("mysql") == my("")
    assert empty("mariadb") != empty("mysql")


@pytest.mark.parametrize(
    "op",
    [
        lambda a, b: a | b,
        lambda a, b: a - b,
        lambda a, b: a & b,
        lambda a, b: a <= b,
        lambda a, b: a.contains(b),
        is_at_least,
        behind,
        diverged_domains,
    ],
)
def test_mixing_flavors_raises(op) -> None:
    with pytest.raises(ValueError, match="mariadb"):
        op(ma("0-1-5"), my(f"{U1}:1-5"))


# -- MariaDB divergence --------------------------------------------------------------------


def test_same_last_seq_from_different_servers_is_divergence() -> None:
    old, new = ma("0-1-101"), ma("0-2-101")  # old primary's errant 101 vs new primary's 101
    assert old != new
    assert not old <= new and not new <= old
    assert not new.contains(old) and not old.contains(new)
    assert diverged_domains(old, new) == {0} == diverged_domains(new, old)
    assert format_gtids(old - new) == "0-1-101..101"
    assert format_gtids(new - old) == "0-2-101..101"
    assert behind(new, old) == 1 and behind(old, new) == 1
    assert format_gtids(old & new) == "0-*-100"
    with pytest.raises(DivergedError) as err:
        old | new
    assert err.value.domains == {0}
    assert "domain 0" in str(err.value)


def test_divergence_is_per_domain() -> None:
    a, b = ma("0-1-100,1-3-7"), ma("0-1-100,1-4-7")
    assert diverged_domains(a, b) == {1}
    assert format_gtids(a - b) == "1-3-7..7"
    assert format_gtids(a & b) == "0-1-100,1-*-6"


def test_divergence_below_the_last_gtid_is_invisible() -> None:
    # The old primary wrote 0-1-101 that never replicated; the new primary (server 2) went on
    # to 0-2-105. Positions cannot tell the two seq 101 apart: only the server finds it, with
    # error 1236 when the old primary rejoins. This test pins the documented limit.
    old, new = ma("0-1-101"), ma("0-2-105")
    assert old <= new
    assert diverged_domains(old, new) == set()
    # Beyond the new primary's position the errant tail is visible, but only that part.
    assert format_gtids(ma("0-1-105") - ma("0-2-103")) == "0-1-104..105"


def test_old_primary_that_lost_nothing_can_rejoin() -> None:
    old, new = ma("0-1-100"), ma("0-2-103")
    assert is_at_least(new, old)
    assert (old - new).is_empty()
    assert behind(old, new) == 3


def test_unknown_server_id_is_less_information() -> None:
    known, unknown = ma("0-1-5"), ma("0-*-5")
    assert unknown <= known
    assert not known <= unknown
    assert format_gtids(known - unknown) == "0-1-5..5"
    assert diverged_domains(known, unknown) == set()
    assert known | unknown == known


# -- properties ----------------------------------------------------------------------------

PROPS = settings(max_examples=100, deadline=None)

_intervals = st.lists(
    st.tuples(st.integers(1, 40), st.integers(0, 12)).map(lambda t: (t[0], t[0] + t[1])),
    min_size=1,
    max_size=3,
)
# Positions (prefixes) with few distinct ends, so that last seqs often coincide.
_seqs = st.one_of(st.integers(1, 6).map(lambda n: [(1, n)]), _intervals)


def _history_server(domain: int, seq: int) -> int:
    """One cluster history: the server id that wrote each seq of each domain."""
    return 1 + (domain * 5 + seq // 7) % 3


@st.composite
def consistent_mariadb(draw: st.DrawFn) -> GtidSet:
    """A MariaDB set drawn from one history: every last GTID carries its real server id."""
    domains = draw(st.dictionaries(st.integers(0, 2), _seqs, max_size=3))
    built = GtidSet.build("mariadb", domains)
    servers = {e.source: _history_server(e.source, e.last) for e in built.entries}  # type: ignore[arg-type]
    return GtidSet.build("mariadb", domains, servers)


@st.composite
def any_mariadb(draw: st.DrawFn) -> GtidSet:
    """A MariaDB set with arbitrary (possibly diverged or unknown) last server ids."""
    domains = draw(st.dictionaries(st.integers(0, 1), _seqs, max_size=2))
    servers = {d: draw(st.none() | st.integers(1, 2)) for d in domains}
    return GtidSet.build("mariadb", domains, servers)


_mysql_sources = st.sampled_from([(U1, ""), (U1, "t_1"), (U2, ""), (U3, "abc")])
mysql_sets = st.dictionaries(_mysql_sources, _seqs, max_size=4).map(
    lambda d: GtidSet.build("mysql", d)
)
LAWFUL = (consistent_mariadb(), mysql_sets)
ANY = (any_mariadb(), mysql_sets)


def sets_of_one_flavor(
    strategies: tuple[st.SearchStrategy[GtidSet], ...], n: int
) -> st.SearchStrategy[tuple[GtidSet, ...]]:
    return st.one_of(*[st.tuples(*[s] * n) for s in strategies])


def members(gtids: GtidSet) -> set[tuple[object, int]]:
    return {
        (e.source, n) for e in gtids.entries for lo, hi in e.intervals for n in range(lo, hi + 1)
    }


@PROPS
@given(st.one_of(*ANY))
def test_prop_format_round_trips(x: GtidSet) -> None:
    assert parse(format_gtids(x), x.flavor) == x
    assert x.count() == len(members(x))


@PROPS
@given(sets_of_one_flavor(LAWFUL, 2))
def test_prop_operations_match_plain_sets(ab: tuple[GtidSet, GtidSet]) -> None:
    a, b = ab
    assert members(a | b) == members(a) | members(b)
    assert members(a & b) == members(a) & members(b)
    assert members(a - b) == members(a) - members(b)
    assert (a <= b) == (members(a) <= members(b))


@PROPS
@given(sets_of_one_flavor(LAWFUL, 2))
def test_prop_set_laws(ab: tuple[GtidSet, GtidSet]) -> None:
    a, b = ab
    assert a <= a | b
    assert b <= a | b
    assert (a - b) & b == empty(a.flavor)
    assert a - b <= a
    assert a & b <= a and a & b <= b
    assert (a - b) | (a & b) == a
    assert a | b == b | a
    assert a & b == b & a
    assert (a | b).count() == a.count() + b.count() - (a & b).count()
    assert behind(a, b) == (b - a).count()
    assert is_at_least(a | b, a)


@PROPS
@given(sets_of_one_flavor(LAWFUL, 3))
def test_prop_union_is_associative(abc: tuple[GtidSet, GtidSet, GtidSet]) -> None:
    a, b, c = abc
    assert (a | b) | c == a | (b | c)
    assert (a & b) & c == a & (b & c)


@PROPS
@given(sets_of_one_flavor(ANY, 2))
def test_prop_order_laws_hold_for_any_sets(ab: tuple[GtidSet, GtidSet]) -> None:
    a, b = ab
    assert a <= a
    if a <= b and b <= a:
        assert a == b
    # Containment and difference agree, diverged or not.
    assert (a <= b) == (a - b).is_empty()
    assert a - b <= a
    diverged = diverged_domains(a, b)
    assert diverged == diverged_domains(b, a)
    if diverged:
        assert not a <= b and not b <= a
        with pytest.raises(DivergedError):
            a | b
    else:
        assert a <= a | b and b <= a | b


@PROPS
@given(sets_of_one_flavor(ANY, 3))
def test_prop_order_is_transitive(abc: tuple[GtidSet, GtidSet, GtidSet]) -> None:
    a, b, c = abc
    if a <= b and b <= c:
        assert a <= c


@st.composite
def diverged_pair(draw: st.DrawFn) -> tuple[GtidSet, GtidSet, int]:
    """Two MariaDB sets whose domain ends at the same seq, written by different servers."""
    domain = draw(st.integers(0, 3))
    last = draw(st.integers(1, 60))
    below = st.lists(
        st.tuples(st.integers(1, last), st.integers(0, 10)).map(
            lambda t: (t[0], min(t[0] + t[1], last))
        ),
        max_size=3,
    )
    one, two = draw(st.lists(st.integers(1, 5), min_size=2, max_size=2, unique=True))
    other = draw(st.dictionaries(st.integers(4, 5), _seqs, max_size=1))
    a = GtidSet.build("mariadb", {domain: [*draw(below), (last, last)], **other}, {domain: one})
    b = GtidSet.build("mariadb", {domain: [*draw(below), (last, last)]}, {domain: two})
    return a, b, domain


@PROPS
@given(diverged_pair())
def test_prop_diverged_pairs(abd: tuple[GtidSet, GtidSet, int]) -> None:
    a, b, domain = abd
    assert diverged_domains(a, b) == {domain}
    assert not a <= b and not b <= a
    assert a != b
    tip = a.entry(domain)
    assert tip is not None
    errant = (a - b).entry(domain)
    assert errant is not None and errant.last == tip.last and errant.server_id == tip.server_id
    common = (a & b).entry(domain)
    assert common is None or common.last < tip.last
    assert (a - b) & b == empty("mariadb")
    assert (a - b) | (a & b) == a
    assert parse(format_gtids(a - b), "mariadb") == a - b
    with pytest.raises(DivergedError):
        a | b


def test_build_rejects_reversed_interval_hidden_by_a_larger_one() -> None:
    with pytest.raises(ValueError, match="5-3"):
        GtidSet.build("mysql", {(U1, ""): [(1, 10), (5, 3)]})


# -- binlog states (per (domain, server id) last seq) --------------------------------------

# (node binlog state, node positions, reference binlog state, reference positions,
#  errant by state, what the positions say: contained?)
STATE_CASES = [
    # The drill: the old primary's 0-1-65 never replicated; the new primary replicated 0-1-1..64
    # and wrote 0-2-65..106. Positions: 0-1-65 "within" 0-2-106.
    ("0-1-65", ("0-1-65", ""), "0-1-64,0-2-106", ("0-2-106", "0-1-64"), "0-1-65", True),
    # Divergence at the last seq: the positions see it too.
    ("0-1-101", ("0-1-101", ""), "0-1-100,0-2-101", ("0-2-101", "0-1-100"), "0-1-101", False),
    # An old primary that lost nothing.
    ("0-1-64", ("0-1-64", ""), "0-1-64,0-2-106", ("0-2-106", "0-1-64"), "", True),
    # A server the reference never heard of.
    ("0-1-10,0-3-12", ("0-3-12", "0-1-10"), "0-1-10,0-2-20", ("0-2-20",), "0-3-12", True),
    # Errant below a later rejoin: node1 wrote 0-1-65 unreplicated, then (wrongly) replicated
    # 0-3-66..70 from node3. Its last GTID is the primary's: only the state shows 0-1-65.
    ("0-1-65,0-3-70", ("0-3-70", "0-3-70"), "0-1-64,0-3-70", ("0-3-70", "0-1-64"), "0-1-65", True),
    # Per domain: domain 1 is errant, domain 0 is not.
    ("0-1-10,1-1-5", ("0-1-10,1-1-5",), "0-1-10,0-2-20,1-1-4", ("0-2-20,1-1-4",), "1-1-5", False),
    # A reference without log_slave_updates binlogs only its own writes: its gtid_slave_pos
    # says it applied server 1's GTIDs up to 64.
    ("0-1-64", ("0-1-64", ""), "0-2-70", ("0-2-70", "0-1-64"), "", True),
    # Its state is what it wrote, its slave position the rest: still the drill's 0-1-65 caught.
    ("0-1-65", ("0-1-65", ""), "0-2-70", ("0-2-70", "0-1-64"), "0-1-65", True),
    # A fresh node holds nothing: contained in anything.
    ("", ("", ""), "0-1-5", ("0-1-5",), "", True),
    # Several errant pairs, each named by its last GTID.
    ("0-1-9,0-4-3,2-4-8", ("0-1-9,2-4-8",), "0-1-9,2-1-7", ("0-1-9,2-1-7",), "0-4-3,2-4-8", False),
]


@pytest.mark.parametrize(
    ("node", "node_pos", "ref", "ref_pos", "errant", "by_position"), STATE_CASES
)
def test_errant_by_state(
    node: str,
    node_pos: tuple[str, ...],
    ref: str,
    ref_pos: tuple[str, ...],
    errant: str,
    by_position: bool,
) -> None:
    mine, theirs = server_state(node, *node_pos), server_state(ref, *ref_pos)
    assert str(errant_by_state(mine, theirs)) == errant
    assert state_contains(theirs, mine) == (errant == "")
    # What the positions alone conclude (the node's last GTIDs against the reference's).
    last = ma(",".join(p for p in node_pos[:1] if p))
    assert (last <= ma(ref_pos[0])) == by_position


def test_drill_divergence_is_missed_by_positions_and_caught_by_state() -> None:
    old, new = ma("0-1-65"), ma("0-2-106")
    assert old <= new and diverged_domains(old, new) == set()  # positions: "contained"
    errant = errant_by_state(parse_binlog_state("0-1-65"), parse_binlog_state("0-1-64,0-2-106"))
    assert str(errant) == "0-1-65"
    assert errant.last == (((0, 1), 65),)


def test_binlog_state_parsing() -> None:
    # MariaDB 10.11 prints each domain's most recent GTID last, not sorted.
    state = parse_binlog_state(" 0-5-3,0-1-12,\n0-7-10 ")
    assert str(state) == "0-1-12,0-5-3,0-7-10"
    assert state.seq(0, 5) == 3 and state.seq(0, 9) == 0 and state.seq(1, 1) == 0
    assert parse_binlog_state("") == BinlogState() and not parse_binlog_state("  ")
    assert parse_binlog_state("0-1-0").is_empty()
    big = "4294967295-4294967295-18446744073709551615"
    assert str(parse_binlog_state(big)) == big


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("0-1", "malformed"),
        ("0-1-2,,0-2-3", "empty element"),
        ("0-1-2,0-1-3", "twice"),
        ("0-1-1..5", "malformed"),
        ("0-*-5", "malformed"),
        ("a-1-5", "malformed"),
        ("4294967296-1-5", "2\\*\\*32"),
        ("0-1-18446744073709551616", "seq out of range"),
    ],
)
def test_binlog_state_garbage_raises(text: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        parse_binlog_state(text)


def test_server_state_merges_positions() -> None:
    # Positions add the pair of their last GTID; the highest seq of a pair wins.
    assert str(server_state("0-1-5,0-2-9", "0-2-12", "0-1-3,1-4-2")) == "0-1-5,0-2-12,1-4-2"
    assert str(server_state("", "0-1-0")) == ""
    with pytest.raises(ValueError, match="not a server position"):
        server_state("", "0-1-3..5")
    with pytest.raises(ValueError, match="not a server position"):
        server_state("", "0-*-5")


# A cluster history: per domain, a list of writer server ids by seq (seq = index + 1).
_history = st.dictionaries(
    st.integers(0, 2), st.lists(st.integers(1, 3), min_size=0, max_size=12), max_size=3
)


def _triples(history: dict[int, list[int]]) -> set[tuple[int, int, int]]:
    return {(d, s, n + 1) for d, writers in history.items() for n, s in enumerate(writers)}


def _state(history: dict[int, list[int]]) -> BinlogState:
    last: dict[tuple[int, int], int] = {}
    for d, s, n in _triples(history):
        last[(d, s)] = max(last.get((d, s), 0), n)
    return BinlogState.of(last)


def _position(history: dict[int, list[int]]) -> str:
    return ",".join(f"{d}-{w[-1]}-{len(w)}" for d, w in sorted(history.items()) if w)


@st.composite
def forked_histories(draw: st.DrawFn) -> tuple[dict[int, list[int]], dict[int, list[int]], bool]:
    """Two nodes that share a history up to a fork (per domain) and then each write (or
    replicate) on their own. The flag: no server writes on both sides after the fork, which
    is what GTID strict mode and one writer at a time give a real cluster."""
    common = draw(_history)
    a: dict[int, list[int]] = {}
    b: dict[int, list[int]] = {}
    for d in {*common, *draw(st.sets(st.integers(0, 2), max_size=2))}:
        shared = common.get(d, [])
        cut_a = draw(st.integers(0, len(shared)))
        cut_b = draw(st.integers(0, len(shared)))
        a[d] = shared[:cut_a] + draw(st.lists(st.integers(4, 5), max_size=4))
        b[d] = shared[:cut_b] + draw(st.lists(st.integers(5, 6), max_size=4))
    after_a = {s for d, w in a.items() for s in w[min(len(w), _fork(a[d], b[d])) :]}
    after_b = {s for d, w in b.items() for s in w[min(len(w), _fork(a[d], b[d])) :]}
    return a, b, not (after_a & after_b)


def _fork(a: list[int], b: list[int]) -> int:
    """The length of the common prefix of two writer lists."""
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


@PROPS
@given(forked_histories())
def test_prop_state_errant_is_sound_and_complete(pair: tuple[dict, dict, bool]) -> None:
    a, b, one_writer_each = pair
    truly_errant = _triples(a) - _triples(b)
    found = errant_by_state(_state(a), _state(b))
    # Sound whatever the history: every reported GTID is on a and not on b.
    assert {(d, s, n) for (d, s), n in found.last} <= truly_errant
    if one_writer_each:  # complete when no server wrote on both branches
        assert found.is_empty() == (not truly_errant)
    # Never weaker than the positions: what they call errant, the state does too.
    if not ma(_position(a)) <= ma(_position(b)):
        assert not found.is_empty()


@PROPS
@given(_history)
def test_prop_binlog_state_text_round_trips(history: dict[int, list[int]]) -> None:
    state = _state(history)
    assert parse_binlog_state(str(state)) == state
    assert server_state(str(state), _position(history)) == state
    assert errant_by_state(state, state).is_empty()
