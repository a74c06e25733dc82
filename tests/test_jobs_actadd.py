"""analysis.jobs.actadd: the three experiments in short form (quick sizes on the tiny model), each saved
with its figure."""

from helpers.actadd import no_shared_env  # noqa: F401  (autouse: the bundled fallbacks, no shared data)

from analysis.jobs.actadd import run_actadd_short


def test_run_actadd_short_quick(tiny, tmp_path):
    short = run_actadd_short(tiny, tmp_path / "actadd", None, quick=True)
    names = {p.name for p in short.paths}
    for experiment in ("weddings", "perplexity", "sentiment"):
        assert f"{experiment}.json" in names and f"{experiment}.png" in names
    assert short.topic.info["n_prompts"] == 4 and short.sentiment.info["n_prompts"] == 4
    assert "stand-in" in short.perplexity.info["source"]
