"""The one adapter to Tune internals (orchestration/trial_ids.py): a SearchGenerator's trials
are numbered like BasicVariantGenerator's, so ingredients are trial-000, trial-001, ... under
every searcher. These tests fail loudly when a Ray upgrade changes how Tune draws trial ids."""

import pytest
from ray.tune.experiment import Experiment, Trial
from ray.tune.search import Searcher
from ray.tune.search import search_generator as tune_search_generator

from raysoup.orchestration.trial_ids import IndexedSearchGenerator, TuneChanged
from raysoup.orchestration.trial_records import trial_name


class Fixed(Searcher):
    def __init__(self):
        super().__init__()
        self.seen: list[str] = []

    def suggest(self, trial_id):
        self.seen.append(trial_id)
        return {"x": 1}


def trainable(config):
    pass


def generator(tmp_path, searcher) -> IndexedSearchGenerator:
    gen = IndexedSearchGenerator(searcher)
    gen.add_configurations(Experiment("e", trainable, num_samples=3, config={},
                                      storage_path=str(tmp_path)))
    return gen


def test_trials_are_numbered_and_tune_is_left_as_it_was(tmp_path):
    draw = Trial.generate_id
    searcher = Fixed()
    gen = generator(tmp_path, searcher)
    ids = [gen.next_trial().trial_id for _ in range(3)]
    prefix = ids[0].split("_")[0]
    assert ids == [f"{prefix}_{i:05d}" for i in range(3)]
    assert searcher.seen == ids  # the searcher is asked under the same id
    assert [trial_name(i) for i in ids] == ["trial-000", "trial-001", "trial-002"]
    assert Trial.generate_id == draw and Trial.generate_id() != Trial.generate_id()

    # A restored sweep's generator keeps the prefix and the count.
    again = generator(tmp_path, Fixed())
    again.set_state(gen.get_state())
    assert again._prefix == prefix


def test_a_tune_that_draws_ids_elsewhere_is_refused(tmp_path, monkeypatch):
    class Elsewhere:
        @classmethod
        def generate_id(cls):
            return "0badc0de"

    monkeypatch.setattr(tune_search_generator, "Trial", Elsewhere)
    with pytest.raises(TuneChanged, match="trial_ids.py needs updating"):
        generator(tmp_path, Fixed()).next_trial()
