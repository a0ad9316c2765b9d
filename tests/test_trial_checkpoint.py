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


def test_a_checkpoint_directory_gone_restarts_the_trial_instead_of_failing_its_restore(tmp_path):
    """The directory itself deleted (the full-size drill's case): Tune's own restore raises
    before the trial function runs; the sweep's trainable starts the trial over instead, and
    restores as Tune does from a checkpoint that exists."""
    from types import SimpleNamespace

    import pytest
    from ray.tune.trainable import FunctionTrainable
    from ray.tune.trainable.function_trainable import wrap_function

    from raysoup.orchestration.trial import RestartsWhenCheckpointGone, with_restart

    def trial(config):
        pass

    cls = wrap_function(with_restart(tune.with_resources(tune.with_parameters(trial, ctx=1),
                                                         {"cpu": 1})))
    assert issubclass(cls, RestartsWhenCheckpointGone) and issubclass(cls, FunctionTrainable)
    gone = tune.Checkpoint.from_directory(tmp_path / "checkpoint_000000")
    with pytest.raises(ValueError, match="does not exist on storage anymore"):
        FunctionTrainable.restore(SimpleNamespace(), gone)  # Tune's, without the mixin
    # An instance without Tune's start-up (no actor, no trial thread): restore only sets fields.
    trainable = cls.__new__(cls)
    assert trainable.restore(gone) is None  # started over, nothing raised
    assert not getattr(trainable, "_restored", False)

    loaded = []
    whole = tmp_path / "checkpoint_000001"
    whole.mkdir()
    trainable.load_checkpoint, trainable._local_ip = loaded.append, "127.0.0.1"
    trainable.restore(whole.as_posix())
    assert [r.checkpoint.path for r in loaded] == [whole.as_posix()] and trainable._restored
