"""analysis.actadd_setup: layers scale with depth; prompts shorter than the front window are dropped and
reported."""

import pytest
from helpers.actadd import no_shared_env  # noqa: F401  (autouse: the bundled fallbacks, no shared data)

from analysis.actadd_setup import actadd_layer, prompt_windows
from analysis.actadd_topic import TopicConfig, weddings_topic
from caa_lens.hooks import scaled_layers
from caa_lens.ood import OODPrompt


def test_layers_scale_with_depth():
    assert scaled_layers(30) == (2, 4, 6, 8, 10)
    assert scaled_layers(4) == (0, 1)
    assert actadd_layer(48) == 6 and actadd_layer(30) == 4 and actadd_layer(4) == 1


def test_short_prompts_are_dropped_and_reported(tiny):
    prompts = [OODPrompt("short", "Hi", ""), OODPrompt("long", "the question about the language " * 3, "")]
    table = prompt_windows(tiny, prompts, 6)
    assert table.used.tolist() == [False, True] and "window 6" in table.reason[0]
    # The template after the user's text counts only with window="prompt".
    assert prompt_windows(tiny, prompts[:1], 6, "prompt").used.tolist() == [True]
    with pytest.raises(ValueError, match="no prompt holds"):
        weddings_topic(tiny, TopicConfig().quick(), prompts=prompts[:1])
