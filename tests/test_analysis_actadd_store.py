"""analysis.actadd_store: saving refuses a directory of someone else's files; a saved experiment's
figure is redrawn from the files alone."""

import pytest
from helpers.actadd import no_shared_env  # noqa: F401  (autouse: the bundled fallbacks, no shared data)

from analysis.actadd_perplexity import RelatedTextConfig, related_text_perplexity
from analysis.actadd_sentiment import SentimentConfig, sentiment_shift
from analysis.actadd_store import save_actadd
from analysis.plots import is_caa_lens_png, script_main
from caa_lens.outputs import OutputError


def test_save_refuses_a_foreign_directory(tiny, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    result = related_text_perplexity(tiny, RelatedTextConfig().quick())
    with pytest.raises(OutputError):
        save_actadd(result, tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_figure_script_redraws(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    save_actadd(sentiment_shift(tiny, SentimentConfig().quick()), out)
    script_main("actadd_sentiment", [str(out)])
    assert is_caa_lens_png(out / "sentiment.png")
    with pytest.raises(SystemExit):
        script_main("actadd_sentiment", [str(tmp_path)])
