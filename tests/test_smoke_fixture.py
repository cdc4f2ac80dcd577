from ranktune.trainables import Trainer


def test_tiny_run_lowers_eval_loss(make_config):
    summary = Trainer(make_config("train.steps=20"), progress=False).fit()
    assert summary["final_eval_loss"] < summary["initial_eval_loss"] - 1.0
