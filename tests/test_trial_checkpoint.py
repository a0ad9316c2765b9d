"""A trial restored from a checkpoint whose files are gone starts over instead of failing: with
`num_to_keep=1` the sweep's driver deletes a trial's checkpoint once it registers a newer one,
and a driver SIGKILLed before it next saves its experiment state restores the trial from the
deleted one (found by the paper-shaped drill, tests/drill72.py: the trial failed on every retry
and the sweep ended incomplete)."""

import torch
from ray import tune

from raysoup.orchestration.trial import _resume_state, _save_state


def test_a_deleted_checkpoint_restarts_the_trial_and_a_whole_one_resumes_it(tmp_path):
    gone = tmp_path / "checkpoint_000000"
    gone.mkdir()  # what the driver's deletion left behind
    assert _resume_state(tune.Checkpoint.from_directory(gone)) is None

    whole = tmp_path / "checkpoint_000001"
    whole.mkdir()
    _save_state({"model": {"w": torch.ones(3)}, "optimizer": {"step": torch.tensor(4)},
                 "epoch": 2}, whole)
    state = _resume_state(tune.Checkpoint.from_directory(whole))
    assert state["epoch"] == 2 and torch.equal(state["model"]["w"], torch.ones(3))
    assert torch.equal(state["optimizer"]["step"], torch.tensor(4))
