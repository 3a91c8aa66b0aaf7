"""The MNIST training task (families/mnist/task.py) inside the shared training loop: what the final evaluation
scores, whatever the intermediate evaluations were capped at."""
import pytest
import torch

from node_cli.core.rundir import RunDir, read_metrics
from node_cli.core.train import fit
from node_cli.families.mnist.task import MnistTask

EVAL_LIMIT = 30


@pytest.mark.parametrize("experiment, extra", [("mnist_mlp", []), ("mnist_odenet", ["model.channels=8"])])
def test_final_evaluation_is_the_whole_test_set_unaugmented_in_eval_mode(compose, fake_mnist, read_mnist, tmp_path,
                                                                         experiment, extra):
    cfg = compose(f"experiment={experiment}", "trainer=quick", "trainer.max_steps=6", "trainer.eval_every=3",
                  f"trainer.eval_limit={EVAL_LIMIT}", "trainer.batch_size=32", "trainer.progress=false",
                  *extra, f"dataset.root={fake_mnist}", "dataset.download=false", "dataset.augment=true",
                  "solver.rtol=0.1", "solver.atol=0.1")
    test_x, test_y = read_mnist(fake_mnist)
    train_x, _ = read_mnist(fake_mnist, "train")
    assert len(test_x) == 200 > EVAL_LIMIT
    torch.manual_seed(0)
    task = MnistTask(cfg, torch.device("cpu"))

    phase = {"now": "train"}               # which call the model's forward passes belong to
    evaluate = task.evaluate

    def spy(limit):
        phase["now"] = "final" if limit is None else "intermediate"
        try:
            return evaluate(limit)
        finally:
            phase["now"] = "train"

    task.evaluate = spy
    seen = []
    hook = task.model.register_forward_hook(
        lambda module, args, out: seen.append((phase["now"], module.training, args[0].detach().clone())))
    summary = fit(cfg, task, RunDir(tmp_path), torch.device("cpu"))
    hook.remove()
    assert summary["status"] == "ok" and summary["steps"] == 6

    final = [(training, x) for now, training, x in seen if now == "final"]
    assert final and not any(training for training, _ in final)          # eval mode throughout
    assert torch.equal(torch.cat([x for _, x in final]), test_x)         # every test image, in order, as stored
    intermediate = [x for now, _, x in seen if now == "intermediate"]
    assert sum(len(x) for x in intermediate) == EVAL_LIMIT                # the step-3 evaluation was capped
    # augmentation was on for training (some training inputs are no stored image), never for the evaluation
    train_inputs = torch.cat([x for now, training, x in seen if now == "train" and training])
    stored = {bytes(img.numpy().tobytes()) for img in train_x}
    assert sum(bytes(img.numpy().tobytes()) not in stored for img in train_inputs) > len(train_inputs) // 2

    assert summary["test_examples"] == 200 and read_metrics(tmp_path)[-1]["test_examples"] == 200
    task.model.eval()                                                   # an independent eval-mode computation
    with torch.no_grad():
        logits = task.model(test_x)
    assert summary["test_error"] == (logits.argmax(1) != test_y).sum().item() / len(test_y)
    assert summary["test_loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, test_y).item(),
                                                 rel=1e-5)
