import math

import pytest
import torch

from steadygrad.studies.grokking import ModularMLP, modular_addition_split, run_grokking


def test_modular_mlp_first_layer_equals_linear_on_concatenated_one_hots():
    torch.manual_seed(0)
    model = ModularMLP(modulus=7, width=5)
    pairs = torch.tensor([[0, 6], [3, 3], [5, 1]])
    one_hot = torch.cat(
        [torch.nn.functional.one_hot(pairs[:, 0], 7), torch.nn.functional.one_hot(pairs[:, 1], 7)],
        1,
    ).float()
    hidden = torch.relu(model.fc2(torch.relu(one_hot @ model.fc1.weight.T)))
    torch.testing.assert_close(model(pairs), model.out(hidden))


def test_split_covers_every_pair_once_with_the_right_labels():
    xtr, ytr, xte, yte = modular_addition_split(11, 0.4, seed=0)
    assert len(ytr) == round(0.4 * 121) and len(ytr) + len(yte) == 121
    pairs = {tuple(p) for p in torch.cat([xtr, xte]).tolist()}
    assert len(pairs) == 121
    assert torch.equal(ytr, (xtr[:, 0] + xtr[:, 1]) % 11)


@pytest.mark.slow
def test_softmax_collapses_and_stalls_while_orthograd_generalises(tmp_path):
    result = run_grokking(
        tmp_path,
        modulus=31,
        train_fraction=0.6,
        steps=1500,
        eval_every=50,
        variants=("softmax", "orthograd"),
        progress=False,
    )
    # float32 softmax: memorised, no generalisation, and a growing share of rows collapsed
    assert result.train_accuracy["softmax"][-1] == 1.0
    assert result.final_test_accuracy["softmax"] < 0.1
    assert result.steps_to_generalise["softmax"] is None
    assert result.max_softmax_collapse["softmax"] > 0.3
    assert result.findings["softmax"] and result.findings["softmax"][0].kind == "softmax_collapse"
    # ⊥AdamW: generalises within a few hundred steps, without softmax collapse
    assert result.steps_to_generalise["orthograd"] is not None
    assert result.steps_to_generalise["orthograd"] <= 500
    assert result.final_test_accuracy["orthograd"] > 0.9
    assert result.max_softmax_collapse["orthograd"] < 0.05 and not result.findings["orthograd"]
    # As a user reads the runs: the float32 softmax run is diagnosed with softmax collapse.
    assert "softmax_collapse" in result.diagnosis["softmax"]
    assert "softmax_collapse" not in result.diagnosis["orthograd"]
    assert (tmp_path / "grokking.png").stat().st_size > 0


def test_stablemax_variants_run_and_report_no_softmax_collapse(tmp_path):
    variants = ("stablemax", "stablemax_orthosgd")
    result = run_grokking(
        tmp_path, modulus=7, steps=5, eval_every=5, variants=variants, progress=False, plot=False
    )
    for v in variants:
        assert math.isnan(result.max_softmax_collapse[v])
        assert result.steps[v] == [0, 5]


def test_arguments_are_checked(tmp_path):
    with pytest.raises(ValueError, match="variants"):
        run_grokking(tmp_path, variants=("adam",))
    with pytest.raises(ValueError, match="train_fraction"):
        run_grokking(tmp_path, train_fraction=1.0)
