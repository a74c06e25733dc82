"""analysis.cli.checks: the argument checks every ``caa-lens`` command runs before loading a model, each
failure a one-line ``UsageError`` naming the option or file."""

import json

import pytest

import caa_lens.models as models
from analysis.cli.checks import (
    UsageError,
    check_layers_fit,
    check_metric_option,
    check_model,
    checking,
    existing_file,
    finite,
    layer_count,
    parse_layers,
    parse_multipliers,
    positive,
    read_dataset,
)
from caa_lens.data import ContrastiveDataset, make_item


def usage_error(call, *args, **kwargs) -> str:
    """The message of the UsageError ``call`` raises, checked to be one line."""
    with pytest.raises(UsageError) as caught:
        call(*args, **kwargs)
    message = str(caught.value)
    assert "\n" not in message, message
    return message


@pytest.mark.parametrize(
    ("text", "expected"),
    [("all", None), ("10,14", [10, 14]), (" 3 , 0 ", [3, 0]), ("7", [7])],
)
def test_parse_layers_accepts(text, expected):
    assert parse_layers(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("12,,14", "empty entry"),
        ("", "empty entry"),
        ("10.9", "not a layer index"),
        ("-1", "negative"),
        ("a", "not a layer index"),
        ("3,3", "repeats"),
        ("1e3", "not a layer index"),
    ],
)
def test_parse_layers_refuses(text, message):
    """Finding 8: '12,,14' gave a bare int() error and '-1' / '10.9' were accepted."""
    with pytest.raises(UsageError, match=message):
        parse_layers(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "is empty"),
        ("1,,2", "empty entry"),
        ("nan", "not a finite"),
        ("1,inf", "not a finite"),
        ("2,2.0", "repeats"),
        ("x", "not a number"),
    ],
)
def test_parse_multipliers_refuses(text, message):
    """Findings 4 and 8: '' exited 0 with an empty output and '1,,2' was accepted."""
    with pytest.raises(UsageError, match=message):
        parse_multipliers(text)


def test_parse_multipliers_accepts():
    assert parse_multipliers("-2, 0,1e1") == [-2.0, 0.0, 10.0]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: parse_layers("12,,14"),
            "--layers '12,,14' has an empty entry; write layer indices like 10,14",
        ),
        (lambda: parse_layers("2,-1"), "--layers '2,-1': layer -1 is negative; layers count from 0"),
        (lambda: parse_layers("1.5"), "--layers '1.5': '1.5' is not a layer index (a whole number)"),
        (lambda: parse_layers("3, 3"), "--layers '3, 3' repeats a layer"),
        (
            lambda: parse_layers("all", "--focus-layer", allow_all=False),
            "--focus-layer 'all': 'all' is not a layer index (a whole number)",
        ),
        (
            lambda: parse_multipliers(" "),
            "--multipliers is empty; give at least one multiplier, e.g. --multipliers=-4,0,4",
        ),
        (
            lambda: parse_multipliers("1,,2"),
            "--multipliers '1,,2' has an empty entry; write multipliers like -4,0,4",
        ),
        (lambda: parse_multipliers("1,x"), "--multipliers '1,x': 'x' is not a number"),
        (
            lambda: parse_multipliers("-inf", "--coefficients"),
            "--coefficients '-inf': '-inf' is not a finite number",
        ),
        (lambda: parse_multipliers("4,4e0"), "--multipliers '4,4e0' repeats a multiplier"),
        (lambda: positive(0, "--batch-size"), "--batch-size must be a positive integer, got 0"),
        (lambda: finite(float("nan"), "--ratio"), "--ratio must be a finite number, got nan"),
        (
            lambda: check_layers_fit([1, 4, 7], 4, "--layers"),
            "--layers: layers [4, 7] do not exist; the model has layers 0..3",
        ),
    ],
)
def test_usage_errors_are_one_line_naming_the_option(call, message):
    assert usage_error(call) == message


def test_parsers_accept_a_custom_option_and_keep_order():
    assert parse_layers("14,10", "--sweep-layers") == [14, 10]
    assert parse_layers("+2") == [2]
    assert parse_multipliers("4, -4", "--coefficients") == [4.0, -4.0]
    assert (positive(3, "--n"), finite(-1.5, "--x")) == (3, -1.5)
    check_layers_fit([0, 3], 4, "--layers")  # inside: no error
    check_layers_fit(None, 4, "--layers")  # all layers
    check_layers_fit([99], None, "--layers")  # depth unknown: checked once the model loads


def test_check_model_accepts_tiny_and_reads_a_checkpoints_depth(tmp_path):
    assert check_model("tiny") == 4 == layer_count("tiny")
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text(json.dumps({"num_hidden_layers": 6}))
    assert check_model(str(checkpoint)) == 6
    (checkpoint / "config.json").write_text(json.dumps({"n_layer": 12}))
    assert check_model(str(checkpoint)) == 12
    (checkpoint / "config.json").write_text("not json")
    assert check_model(str(checkpoint)) is None  # loadable later; the depth is just not known yet
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    assert check_model(str(gguf)) is None


def test_check_model_refuses_a_bad_model_in_one_line_naming_the_option(tmp_path, monkeypatch):
    weights = tmp_path / "weights.bin"
    weights.write_text("not a model")
    message = usage_error(check_model, str(weights))
    assert message.startswith(f"--model: model {str(weights)!r} is a file but not a .gguf file")
    missing = str(tmp_path / "missing" / "model.gguf")
    assert usage_error(check_model, missing) == (
        f"--model: model {missing!r}: no such file or directory (give an existing checkpoint directory or .gguf file)"
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    assert usage_error(check_model, str(empty)) == (
        f"--model: {empty} is a directory but not a Hugging Face checkpoint (no config.json)"
    )
    assert usage_error(check_model, " ") == "--model: model name must be a non-empty string, got ' '"
    # An unknown Hub name, offline: refused at once, without the network.
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(models, "_hub_reachable", lambda *a, **k: pytest.fail("the network was asked"))
    message = usage_error(check_model, "no-such-org/no-such-model")
    assert message.startswith("--model: model 'no-such-org/no-such-model' cannot be loaded")
    assert "HF_HUB_OFFLINE is set" in message


def test_checking_turns_validation_errors_into_usage_errors():
    with pytest.raises(UsageError, match=r"^--metric: bad value$"), checking("--metric"):
        raise ValueError("bad value")
    with pytest.raises(UsageError, match=r"^missing key$"), checking():
        raise KeyError("missing key")  # a KeyError's message, not its repr
    with pytest.raises(UsageError, match=r"^kept as is$"), checking("--other"):
        raise UsageError("kept as is")
    with pytest.raises(RuntimeError), checking("--x"):
        raise RuntimeError("not a validation error")


def test_existing_file_and_read_dataset(tmp_path):
    assert (
        usage_error(existing_file, tmp_path / "nope.json", "dataset")
        == f"dataset {tmp_path / 'nope.json'} does not exist"
    )
    assert usage_error(existing_file, tmp_path, "vector file") == f"vector file {tmp_path} is not a file"
    assert len(read_dataset("optimism:test", limit=2)) == 2
    assert read_dataset("optimism:test", limit=2).name.endswith(":first2")
    assert usage_error(read_dataset, "optimism", -1) == "--limit must be >= 0 (0: all items), got -1"
    assert usage_error(read_dataset, "optimism:train").startswith("unknown split 'train' in 'optimism:train'")


def test_metric_option_checks_the_metric_and_the_answer_texts():
    letters_only = ContrastiveDataset("d", (make_item("Tea or coffee?", "(A)", "(B)"),), source="d.json")
    assert check_metric_option("letter", letters_only) == "letter"
    assert usage_error(check_metric_option, "logit").startswith("--metric: metric must be one of 'letter'")
    message = usage_error(check_metric_option, "likelihood", letters_only)
    assert message.startswith("--metric likelihood: d.json: item 0: the question lists no lettered options")
    assert check_metric_option("likelihood") == "likelihood"  # no dataset given: the metric alone
