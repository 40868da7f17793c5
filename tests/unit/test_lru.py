"""The bounded maps a web process keeps between requests: the least recently used entries go first, once
there are too many or they weigh too much."""

from retrace_server.lru import LRU


def test_entries_are_capped_in_number_and_in_weight_least_recently_used_first():
    kept = LRU(3, weight=1256)
    for number in range(5):
        kept.put(number, "x", 10)
    assert [kept.get(number) is not None for number in range(5)] == [False, False, True, True, True]
    kept.put("large", "x", 900)
    assert kept.get("large") is not None and kept.get(2) is None and kept.get(4) is not None
    kept.put("larger", "x", 1251)
    assert [kept.get(key) is not None for key in (3, 4, "large", "larger")] == [False, False, False, True]


def test_a_value_made_once_is_kept_even_when_it_is_none_and_forgotten_on_demand():
    kept = LRU(10)
    made = []
    for _ in range(3):
        assert kept.get_or(("release", "missing"), lambda: made.append(1)) is None
    assert made == [1]
    kept.put_many([(("a", 1), "one"), (("b", 2), "two")])
    assert kept.get_many([("a", 1), ("b", 2), ("c", 3)]) == {("a", 1): "one", ("b", 2): "two"}
    kept.forget(lambda key: key[0] == "a")
    assert kept.get_many([("a", 1), ("b", 2)]) == {("b", 2): "two"}
