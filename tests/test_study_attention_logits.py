import pytest

from steadygrad.studies.attention_logits import run_attention_logits


@pytest.mark.slow
def test_qk_norm_stops_attention_logit_growth_and_reaches_lower_loss(tmp_path):
    result = run_attention_logits(
        tmp_path,
        lr=0.05,
        steps=150,
        n_embd=32,
        block_size=32,
        batch_size=16,
        eval_every=10,
        progress=False,
    )
    assert result.detector_fired == {"plain": True, "qk_norm": False}
    assert result.peak_attn_logit["plain"] > 50 > result.peak_attn_logit["qk_norm"]
    # With unit-free scales the QK-norm logits are bounded by sqrt(head_dim) * |g_q| * |g_k|;
    # a few times sqrt(8) is the most the learned scales reach here.
    assert result.peak_attn_logit["qk_norm"] < 10 * 8**0.5
    assert result.final_val_loss["qk_norm"] < result.final_val_loss["plain"]
    first = result.findings["plain"][0]
    assert first.kind == "attention_logit_growth" and first.where in ("h.0.attn", "h.1.attn")
    # As a user reads it: the plain run is diagnosed with attention-logit growth first.
    assert result.diagnosis["plain"][0] == "attention_logit_growth"
    assert "attention_logit_growth" not in result.diagnosis["qk_norm"]
    assert (tmp_path / "attention_logits.png").stat().st_size > 0
    assert (tmp_path / "attention_logits.json").exists()


def test_arguments_are_checked(tmp_path):
    with pytest.raises(ValueError, match="lr"):
        run_attention_logits(tmp_path, lr=-1.0)
    with pytest.raises(TypeError, match="steps"):
        run_attention_logits(tmp_path, steps=1.5)
