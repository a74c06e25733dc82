"""ActAdd's three experiments (``analysis.actadd``) on the tiny model: each runs end to end in quick form
and writes its tables and figure; planted effects are recovered (and a planted effect elsewhere is not
mistaken for one); the batched sentence losses equal ``caa_lens.capability.perplexity``; the CLI refuses
bad arguments with one-line errors before loading a model."""

import itertools
import json

import pandas as pd
import pytest
import torch

from analysis.actadd import (
    ACTADD_MARKER,
    RelatedTextConfig,
    SentimentConfig,
    TopicConfig,
    actadd_layer,
    actadd_texts,
    load_actadd,
    negative_sentences,
    prompt_windows,
    related_text_perplexity,
    run_actadd_short,
    save_actadd,
    scaled_layers,
    sentence_losses,
    sentiment_shift,
    split_sentences,
    topic_prompts,
    weddings_topic,
)
from analysis.actadd_plots import actadd_script_main, save_figure
from analysis.cli import main
from analysis.figures import is_caa_lens_png
from caa_lens.capability import perplexity
from caa_lens.ood import OODPrompt
from caa_lens.outputs import OutputError
from caa_lens.scorers import WEDDING_WORDS, words
from caa_lens.steering import Injection
from caa_lens.vectors import SteeringVector, make_provenance

# Words the tiny tokenizer holds as single tokens (with a leading space): prompts built from them all
# have the same length, so one planted window ends on every prompt's last token.
SINGLE_TOKEN_WORDS = ("the", "question", "about", "language", "and", "The")


@pytest.fixture(autouse=True)
def no_shared_env(monkeypatch):
    """The fallbacks are tested here: no shared data unless a test passes it."""
    monkeypatch.delenv("CAA_LENS_SHARED_DATA", raising=False)


def planted(model, token: str, rows: int, layer: int = 3, norm: float = 1.0) -> SteeringVector:
    """A front vector of ``rows`` positions, each along the unembedding of ``token`` (one token)."""
    ids = model.tokenizer(token, add_special_tokens=False).input_ids
    assert len(ids) == 1, f"{token!r} is {len(ids)} tokens in the tiny vocabulary"
    direction = model.W_U[:, ids[0]].detach().float()
    direction = direction / direction.norm() * norm
    provenance = make_provenance(model, "resid_pre", "all", "planted", token, "0", 1, torch.float32)
    return SteeringVector(direction.repeat(rows, 1)[None], (layer,), provenance)


def equal_prompts(model, count: int = 8) -> tuple[list[OODPrompt], int]:
    """``count`` different prompts of the same token length, and the window reaching their last token."""
    texts = [" ".join(words) for words in itertools.permutations(SINGLE_TOKEN_WORDS[:5], 4)][:count]
    prompts = [OODPrompt(f"q{i}", text, "test") for i, text in enumerate(texts)]
    table = prompt_windows(model, prompts, 1, "prompt")
    reach = table.user_tokens + table.tail_tokens
    assert reach.nunique() == 1, table
    return prompts, int(reach.iloc[0])


# ---------------------------------------------------------------------------------------------- units


def test_layers_scale_with_depth():
    assert scaled_layers(30) == (2, 4, 6, 8, 10)
    assert scaled_layers(4) == (0, 1)
    assert actadd_layer(48) == 6 and actadd_layer(30) == 4 and actadd_layer(4) == 1


def test_bundled_data_is_what_the_experiments_need():
    prompts = topic_prompts()
    assert len(prompts) == 24 and len({p.id for p in prompts}) == 24
    for p in prompts:
        assert 5 <= len(p.prompt.split()) <= 15
        assert not set(words(p.prompt)) & set(WEDDING_WORDS), p
    texts, source, related = actadd_texts(None)
    assert len(texts) == 4 and related in texts and "stand-in" in source
    assert all(250 <= len(t.split()) <= 350 for t in texts.values())
    assert sum(w in WEDDING_WORDS for w in words(texts[related])) >= 10
    assert all(not set(words(t)) & set(WEDDING_WORDS) for name, t in texts.items() if name != related)
    sentences, source = negative_sentences(None)
    assert len(sentences) == 40 and "stand-in" in source


def test_shared_data_is_used_when_given(shared_data):
    texts, source, related = actadd_texts(shared_data)
    assert related == "chatgpt_wedding_essay_20230423" and "ActAdd" in source and len(texts) == 4
    sentences, source = negative_sentences(shared_data, 5)
    assert len(sentences) == 5 and "SST-2" in source
    with pytest.raises(FileNotFoundError):
        actadd_texts(shared_data / "nothing-here")


def test_split_sentences():
    assert split_sentences("One. Two!  Three?\n\nFour 4.5 stays.\nLast") == [
        "One.",
        "Two!",
        "Three?",
        "Four 4.5 stays.",
        "Last",
    ]


def test_short_prompts_are_dropped_and_reported(tiny):
    prompts = [OODPrompt("short", "Hi", ""), OODPrompt("long", "the question about the language " * 3, "")]
    table = prompt_windows(tiny, prompts, 6)
    assert table.used.tolist() == [False, True] and "window 6" in table.reason[0]
    # The template after the user's text counts only with window="prompt".
    assert prompt_windows(tiny, prompts[:1], 6, "prompt").used.tolist() == [True]
    with pytest.raises(ValueError, match="no prompt holds"):
        weddings_topic(tiny, TopicConfig().quick(), prompts=prompts[:1])


def test_sentence_losses_equal_capability_perplexity(tiny):
    vector = planted(tiny, " answer", 3, layer=1, norm=2.0)
    sentence = "The answer is the question about the language."
    table = sentence_losses(tiny, [sentence, "Yes and the answer."], {"v": vector}, 1, [3.0], batch_size=3)
    for name, coefficient in (("", 0.0), ("v", 3.0)):
        row = table[(table.vector == name) & (table.sentence_index == 0)].iloc[0]
        expected = perplexity(tiny, sentence, Injection(vector, 1, coefficient, "front"), progress=False)
        assert row.n_tokens == expected.n_tokens
        assert row.nll / row.n_tokens == pytest.approx(expected.mean_nll, rel=1e-5)


# -------------------------------------------------------------------------------------- end to end


def check_saved(result, out, experiment: str, tables: tuple[str, ...]) -> None:
    paths = save_actadd(result, out)
    figure = save_figure(result, out)
    assert (out / ACTADD_MARKER).is_file()
    for table in tables:
        assert (out / f"{experiment}_{table}.csv") in paths
        assert not pd.read_csv(out / f"{experiment}_{table}.csv").empty
    assert json.loads((out / f"{experiment}.json").read_text())["experiment"] == experiment
    assert figure == out / f"{experiment}.png" and is_caa_lens_png(figure)
    again = load_actadd(out, experiment)
    assert type(again) is type(result)
    save_figure(again, out)  # redrawn from the files alone, over its own figure


def test_topic_quick_end_to_end(tiny, tmp_path):
    result = weddings_topic(tiny, TopicConfig().quick())
    effects = result.effects
    assert set(effects.metric) == {"wedding_any", "wedding_rate", "completion_nll", "degenerate"}
    assert set(effects.layer) == {0, 1} and set(effects.multiplier) == {4.0, 16.0}
    assert (effects.n_prompts == 4).all() and (effects.null_scope == "every cell").all()
    assert effects.n_null.eq(2).all() and effects.best.sum() == 4  # one cell, four metrics
    assert result.info["n_prompts"] == 4 and result.info["window"] == result.prompts.window.iloc[0]
    check_saved(result, tmp_path, "weddings", ("effects", "generations", "prompts", "vector_norms"))


def test_controls_at_the_best_cell_only(tiny):
    config = TopicConfig().quick()
    result = weddings_topic(tiny, TopicConfig(**{**config.__dict__, "controls_at": "cell"}))
    effects = result.effects
    nulled = effects[effects.null_scope == "best cell"]
    assert set(zip(nulled.layer, nulled.multiplier, strict=True)) == {
        (result.best_layer, result.best_coefficient)
    }
    rest = effects[effects.null_scope == "none"]
    assert len(rest) == len(effects) - 4 and (rest.vs_null == "no null").all()
    assert result.generations.vector.str.startswith("random:").any()


def test_perplexity_quick_end_to_end(tiny, tmp_path):
    result = related_text_perplexity(tiny, RelatedTextConfig().quick())
    tested = result.tested()
    assert len(tested) == 4 * 2 and (tested.n_sentences == 4).all() and (tested.n_null == 2).all()
    assert "stand-in" in result.info["source"] and result.related == "wedding_day"
    assert ((tested.ratio_low <= tested.ratio) & (tested.ratio <= tested.ratio_high)).all()
    assert result.sentences.used.sum() == 16
    check_saved(result, tmp_path, "perplexity", ("ratios", "sentences", "losses"))


def test_sentiment_quick_end_to_end(tiny, tmp_path):
    result = sentiment_shift(tiny, SentimentConfig().quick())
    assert set(result.effects.metric) == {"positive", "sentiment", "completion_nll", "degenerate"}
    assert result.effects.layer.eq(actadd_layer(4)).all() and "stand-in" in result.info["source"]
    check_saved(result, tmp_path, "sentiment", ("effects", "generations", "prompts", "vector_norms"))


def test_run_actadd_short_quick(tiny, tmp_path):
    short = run_actadd_short(tiny, tmp_path / "actadd", None, quick=True)
    names = {p.name for p in short.paths}
    for experiment in ("weddings", "perplexity", "sentiment"):
        assert f"{experiment}.json" in names and f"{experiment}.png" in names
    assert short.topic.info["n_prompts"] == 4 and short.sentiment.info["n_prompts"] == 4
    assert "stand-in" in short.perplexity.info["source"]


# ------------------------------------------------------------------------------------ planted effects


def topic_planted(tiny, token: str) -> pd.Series:
    prompts, reach = equal_prompts(tiny)
    config = TopicConfig(
        layers=(3,),
        coefficients=(50.0,),
        words=("answer",),
        topic="answer",
        controls=3,
        controls_at="all",
        max_new_tokens=1,
        window="prompt",
        n_resamples=1000,
    )
    result = weddings_topic(tiny, config, prompts=prompts, vector=planted(tiny, token, reach))
    return result.cell("answer_any")


def test_planted_topic_word_is_recovered(tiny):
    # A window ending on the last prompt token, along the unembedding of " answer": every first token
    # becomes " answer"; random vectors of the same norms do not write it.
    cell = topic_planted(tiny, " answer")
    assert cell.unsteered < 0.5 and cell.steered == 1.0
    assert cell.effect_low > 0.4 and cell.vs_null == "above null"


def test_planted_other_word_is_not_counted(tiny):
    cell = topic_planted(tiny, " question")
    assert cell.steered == 0.0 and cell.vs_null != "above null"


def test_planted_sentiment_is_recovered(tiny):
    prompts, reach = equal_prompts(tiny)
    config = SentimentConfig(
        layers=(3,),
        coefficients=(50.0,),
        controls=3,
        controls_at="all",
        max_new_tokens=1,
        window="prompt",
        n_resamples=1000,
    )
    vector = planted(tiny, " Yes", reach)  # VADER: "Yes" is positive (compound 0.40)
    result = sentiment_shift(tiny, config, sentences=[p.prompt for p in prompts], vector=vector)
    cell = result.cell("positive")
    assert cell.steered == 1.0 and cell.vs_null == "above null"


def test_planted_perplexity_lowers_only_the_related_text(tiny):
    texts = {
        "answers": "The answer answer answer is the question. The answer answer answer and the language. "
        "Yes answer answer answer about the question. The answer answer answer and the answer.",
        "questions": "The question about the language. Yes and the question about the language. "
        "The language and the question. The question and the language about the question.",
        "yes": "Yes the language and the question. The question is about the language and the question. "
        "Yes and the language about the question. The language about the question and the language.",
    }
    config = RelatedTextConfig(layer=3, coefficients=(4.0, 16.0), controls=3, n_resamples=1000)
    vector = planted(tiny, " answer", 3)
    result = related_text_perplexity(tiny, config, texts=texts, related="answers", vector=vector)
    tested = result.tested().set_index(["text", "coefficient"])
    assert tested.loc[("answers", 16.0), "ratio_high"] < 1
    assert tested.loc[("answers", 16.0), "vs_null"] == "below null"
    for other in ("questions", "yes"):
        assert tested.loc[(other, 16.0), "ratio"] > 1
        assert tested.loc[(other, 16.0), "vs_null"] != "below null"


# -------------------------------------------------------------------------------------- outputs, CLI


def test_save_refuses_a_foreign_directory(tiny, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    result = related_text_perplexity(tiny, RelatedTextConfig().quick())
    with pytest.raises(OutputError):
        save_actadd(result, tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_figure_script_redraws(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    save_actadd(sentiment_shift(tiny, SentimentConfig().quick()), out)
    actadd_script_main("sentiment", [str(out)])
    assert is_caa_lens_png(out / "sentiment.png")
    with pytest.raises(SystemExit):
        actadd_script_main("sentiment", [str(tmp_path)])


def run_cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("experiment", ["weddings", "perplexity", "sentiment"])
def test_cli_quick_runs(experiment, tmp_path, capsys):
    code, out, err = run_cli(
        capsys, "actadd", experiment, "--out", tmp_path / "o", "--model", "tiny", "--quick"
    )
    assert code == 0, err
    assert str(tmp_path / "o" / f"{experiment}.png") in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["weddings", "--layers", "7"], "--layers: layers [7] do not exist"),
        (["weddings", "--layers", "1,x"], "not a layer index"),
        (["weddings", "--coefficients", "0"], "at least one non-zero coefficient"),
        (["weddings", "--coefficients", "1,nan"], "not a finite number"),
        (["sentiment", "--controls-at", "nowhere"], "--controls-at must be one of"),
        (["sentiment", "--controls", "-1"], "--controls must be >= 0"),
        (["sentiment", "--max-new-tokens", "0"], "--max-new-tokens must be >= 1"),
        (["perplexity", "--layer", "9"], "--layer: layers [9] do not exist"),
        (["perplexity", "--shared-data", "/no/such/dir"], "is not a directory"),
        (["perplexity", "--max-sentences", "-2"], "--max-sentences must be >= 0"),
        (["weddings", "--model", "./no/such/model"], "--model:"),
        (["nothing"], "No such command"),
    ],
)
def test_cli_bad_arguments_are_one_line_errors(args, message, tmp_path, capsys, monkeypatch):
    import caa_lens.models

    def refuse(*a, **k):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(caa_lens.models, "load_model", refuse)
    monkeypatch.setattr("caa_lens.tiny.tiny_model", refuse)
    extra = [] if "--model" in args else ["--model", "tiny"]
    code, _, err = run_cli(capsys, "actadd", *args, "--out", tmp_path / "o", *extra)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("caa-lens: error:") and message in err, err


def test_cli_refuses_foreign_out_and_incomplete_shared_data(tmp_path, capsys):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    code, _, err = run_cli(capsys, "actadd", "sentiment", "--out", foreign, "--model", "tiny")
    assert code == 2 and "refusing to write" in err and err.count("\n") == 1
    empty = tmp_path / "shared"
    empty.mkdir()
    for experiment, what in (("perplexity", "four ActAdd texts"), ("sentiment", "sst2")):
        args = ("actadd", experiment, "--out", tmp_path / "o", "--model", "tiny", "--shared-data", empty)
        code, _, err = run_cli(capsys, *args)
        assert code == 2 and what in err, err
