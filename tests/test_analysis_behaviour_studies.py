"""The bundled behaviours' studies: every spec reads its bundled prompts, and reply-text vectors read the
option texts."""

import pandas as pd
import pytest

from analysis.behaviour_studies import bundled_specs, reply_text_vector
from caa_lens.ood import load_ood_prompts


@pytest.mark.parametrize("name", sorted(bundled_specs()))
def test_every_bundled_spec_has_prompts_its_scorers_read(name):
    from importlib import resources

    source = "optimism" if name == "weddings" else name
    prompts = load_ood_prompts(str(resources.files("caa_lens") / "data" / source / "open_ended.json"))
    spec = bundled_specs()[name]
    frame = pd.DataFrame(
        {"prompt": [p.prompt for p in prompts[:3]], "completion": ["I'm sorry, hey wedding."] * 3}
    )
    for scorer in spec.scorers:
        assert set(scorer.score(frame)) == set(scorer.columns)


def test_reply_text_vectors_read_the_option_texts(tiny):
    from caa_lens.data import load_bundled

    data = load_bundled("refusal").select(range(6))
    vector = reply_text_vector(tiny, data, [1, 2])
    assert vector.layers == (1, 2)
    assert vector.provenance.position_rule == "last" and vector.provenance.dataset.endswith(":text")
