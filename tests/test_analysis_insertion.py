"""analysis._insertion: every candidate x item score on the prefix cache (input embeddings, explicit
positions, steering from after the insertion) equals a full forward pass of the prompt with the tokens
inserted, for both placements and for the one-hot (gradient) path."""

import pytest
import torch
from helpers.analysis_toy import toy_dataset

from analysis._insertion import insertion_batch, insertion_index, score_onehots, score_tokens
from caa_lens.evaluation import scoring_prompt
from caa_lens.methods import caa_vector
from caa_lens.steering import Injection, steering

CANDIDATES = torch.tensor([[10, 11, 12], [40, 41, 42]])


def full_pass(model, vector, item, tokens, placement):
    """Steered p(matching) and unsteered mean cross-entropy of ``tokens``, from full passes, batch 1."""
    prompt = scoring_prompt(model.tokenizer, item)
    cut = insertion_index(model.tokenizer, prompt, item.question, placement)
    ids = list(prompt.prompt.token_ids[:cut]) + tokens + list(prompt.prompt.token_ids[cut:])
    with (
        torch.no_grad(),
        steering(model, Injection(vector, 2, 2.0), start=prompt.prompt.steer_start + len(tokens)),
    ):
        probs = model(torch.tensor([ids]))[0, -1].softmax(-1)[list(prompt.label_token_ids)]
    with torch.no_grad():
        plain = model(torch.tensor([ids]))[0].float().log_softmax(-1)
    targets = torch.tensor(tokens)
    cross_entropy = -plain[cut - 1 : cut - 1 + len(tokens)].gather(1, targets[:, None]).mean()
    return float(probs[prompt.matching] / probs.sum()), float(cross_entropy)


@pytest.mark.parametrize("placement", ["suffix", "prefix"])
def test_scores_equal_full_passes_per_candidate_and_item(tiny, placement):
    data = toy_dataset(6).select(range(3))
    vector = caa_vector(tiny, toy_dataset(6), progress=False).scaled(40.0)
    batch = insertion_batch(tiny, data, placement)
    by_tokens = score_tokens(tiny, batch, CANDIDATES, vector, 2, 2.0, max_rows=3)
    onehots = torch.nn.functional.one_hot(CANDIDATES, tiny.cfg.d_vocab).float()
    by_onehots = score_onehots(tiny, batch, onehots, vector, 2, 2.0)
    onehot_p, onehot_ce = by_onehots.p_matching.detach(), by_onehots.cross_entropy.detach()
    for c, tokens in enumerate(CANDIDATES.tolist()):
        for i, item in enumerate(data):
            p, ce = full_pass(tiny, vector, item, tokens, placement)
            assert float(by_tokens.p_matching[c, i]) == pytest.approx(p, abs=1e-5)
            assert float(by_tokens.cross_entropy[c, i]) == pytest.approx(ce, abs=1e-4)
            assert float(onehot_p[c, i]) == pytest.approx(p, abs=1e-5)
            assert float(onehot_ce[c, i]) == pytest.approx(ce, abs=1e-4)
