from collections import Counter

import pytest

from histoseek.data.split import (
    compile_group_regex,
    group_ids_from_regex,
    parse_fractions,
    regex_group,
    stratified_group_split,
)
from histoseek.errors import HistoseekError


def test_groups_never_straddle_splits_and_classes_follow_fractions():
    labels = [i % 3 for i in range(600)]
    groups = [f"slide{i // 6}" for i in range(600)]
    assignment = stratified_group_split(labels, groups, [0.7, 0.15, 0.15], seed=0)
    by_group = {}
    for group, split in zip(groups, assignment, strict=True):
        assert by_group.setdefault(group, split) == split
    counts = Counter(zip(assignment, labels, strict=True))
    for label in range(3):
        assert counts[(0, label)] == pytest.approx(140, abs=12)
        assert counts[(1, label)] == pytest.approx(30, abs=12)


def test_split_is_reproducible_and_seed_dependent():
    labels = [i % 2 for i in range(100)]
    groups = list(range(100))
    a = stratified_group_split(labels, groups, [0.8, 0.2], seed=1)
    assert a == stratified_group_split(labels, groups, [0.8, 0.2], seed=1)
    assert a != stratified_group_split(labels, groups, [0.8, 0.2], seed=2)


def test_every_split_with_a_share_gets_something():
    assignment = stratified_group_split([0, 1, 0, 1], ["a", "b", "c", "d"], [0.9, 0.05, 0.05], 0)
    assert set(assignment) == {0, 1, 2}


def test_group_ids_from_regex():
    names = ["1_CRC-Prim-HE-03_x.tif", "2_CRC-Prim-HE-10_y.tif", "plain.png"]
    assert group_ids_from_regex(names, r"CRC-Prim-HE-\d+") == [
        "CRC-Prim-HE-03",
        "CRC-Prim-HE-10",
        "plain.png",
    ]
    assert group_ids_from_regex(["BRACS_12_a.png"], r"^(BRACS_\d+)_") == ["BRACS_12"]
    with pytest.raises(HistoseekError, match="group-regex"):
        group_ids_from_regex(names, "(")


def test_an_unmatched_name_is_a_group_of_its_own_by_its_id():
    # a/1.png and b/1.png share a file name, not a group.
    names = ["1.png", "1.png", "P1_2.png"]
    ids = ["a/1.png", "b/1.png", "a/P1_2.png"]
    assert group_ids_from_regex(names, r"(P\d+)_", ids=ids) == ["a/1.png", "b/1.png", "P1"]
    assert group_ids_from_regex(names, None, ids=ids) == ids


def test_a_users_regex_that_matches_no_name_is_refused():
    names = ["P1_tumor_0.png", "P2_normal_1.png"]
    assert group_ids_from_regex(names, r"patient(\d+)") == names  # no check asked for
    with pytest.raises(HistoseekError) as refused:
        group_ids_from_regex(names, r"patient(\d+)", "training file names")
    assert str(refused.value) == (
        "--group-regex 'patient(\\d+)' matches none of the 2 training file names "
        "(e.g. 'P1_tumor_0.png'), so every image would be a group of its own"
    )


def test_a_regex_that_finds_only_empty_strings_finds_no_group():
    # 'x*' matches every name with "", which used to count as found: no refusal, and the
    # index gave every such image the one group "".
    names = ["P1_tumor_0.png", "P2_normal_1.png"]
    assert regex_group(compile_group_regex("x*"), names[0]) is None
    assert regex_group(compile_group_regex(r"(x?)P1"), names[0]) is None
    with pytest.raises(HistoseekError, match="matches none of the 2 file names"):
        group_ids_from_regex(names, "x*", "file names")


def test_a_users_regex_that_misses_some_names_says_so():
    partly = ["P1_tumor_0.png", "tumor_1.png", "tumor_2.png"]
    notes = []
    groups = group_ids_from_regex(partly, r"(P\d+)_", "file names", notes.append)
    assert groups == ["P1", "tumor_1.png", "tumor_2.png"]
    assert notes == [
        "--group-regex '(P\\d+)_' matches 1 of the 3 file names; the other 2 are each a group "
        "of their own (e.g. 'tumor_1.png')"
    ]
    group_ids_from_regex(partly[:1], r"(P\d+)_", "file names", notes.append)
    group_ids_from_regex(partly, r"(P\d+)_", notify=notes.append)  # no check asked for
    assert len(notes) == 1


@pytest.mark.parametrize("text", ["0.7,0.2", "a,b", "-0.5,1.5", "0.5,nan,0.5", "nan", "inf,-inf"])
def test_parse_fractions_rejects_bad_input(text):
    with pytest.raises(HistoseekError):
        parse_fractions(text)


def test_parse_fractions():
    assert parse_fractions("0.7,0.15,0.15") == [0.7, 0.15, 0.15]
