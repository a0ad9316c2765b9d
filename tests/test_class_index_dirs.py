"""ImageNetV2's folders are named by class index: numeric_dir_map maps them onto train's dirs."""

from raysoup.data.imagefolder import numeric_dir_map

SPACE = ["n01440764", "n01443537", "n01484850"]


def test_index_named_dirs_map_onto_the_sorted_space():
    # Listed in string order ("0", "1", "10", ...): the map goes by integer value.
    space = [f"n{i:08d}" for i in range(12)]
    own = sorted(str(i) for i in range(12))
    assert own[:3] == ["0", "1", "10"]
    mapping = numeric_dir_map(own, space)
    assert mapping == {str(i): space[i] for i in range(12)}
    assert numeric_dir_map(["2", "0"], SPACE) == {"2": "n01484850", "0": "n01440764"}


def test_not_numeric_or_out_of_range_is_none():
    assert numeric_dir_map(SPACE, SPACE) is None  # ordinary wnid folders
    assert numeric_dir_map(["0", "3"], SPACE) is None  # 3 >= len(space)
    assert numeric_dir_map(["0", "x"], SPACE) is None
    assert numeric_dir_map(["0", "-1"], SPACE) is None
    assert numeric_dir_map(["0", "1.0"], SPACE) is None
    assert numeric_dir_map(["٣"], SPACE) is None  # a non-ASCII digit
    assert numeric_dir_map([], SPACE) is None


def test_numeric_names_that_are_the_space_match_by_name():
    # A label space whose names are numbers already: no remapping (it would permute them).
    space = ["1", "10", "2"]
    assert numeric_dir_map(["1", "2"], space) is None
    assert numeric_dir_map(["0", "1"], space) is None  # "1" is a name in the space
