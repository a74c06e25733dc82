"""CAA, PCA and ActAdd vectors on the tiny model, checked against an independent plain implementation.

The reference is a separate, unbridged Hugging Face ``LlamaForCausalLM`` built with the tiny model's
config and seed (so it has the same weights), run one prompt at a time on the whole sequence, with the
prompt written out by hand in the Llama-2 format the CAA reference used and the answer letter located
from the tokenizer's character offsets.
"""

import copy
import hashlib

import pytest
import torch
from transformers import LlamaForCausalLM

from caa_lens.data import ContrastiveDataset, DatasetError, PromptPair, load_bundled, make_item
from caa_lens.extraction import extract_contrastive
from caa_lens.methods import actadd_vector, caa_vector, pca_directions, pca_vector, prompt_pair_hash
from caa_lens.prompts import FormattedPrompt

LETTERS = ("A", "B")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matrices run 10-20x faster on one thread than on two contended ones; restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def plain_hf(tiny):
    """An unbridged HF model with the tiny model's weights (same config, same seed)."""
    state = torch.random.get_rng_state()
    torch.manual_seed(0)
    try:
        model = LlamaForCausalLM(copy.deepcopy(tiny.original_model.config)).eval()
    finally:
        torch.random.set_rng_state(state)
    ids = torch.tensor([[1, 40, 41, 42, 43, 44]])
    with torch.inference_mode():
        assert torch.equal(model(ids).logits, tiny(ids))  # same weights, bridge adds nothing
    return model


QUESTIONS = (
    "Will the weather be sunny tomorrow?",
    "Is it raining?",
    "What is the best way to learn a new language?",
    "Do you love the ocean?",
    "Would you agree with this statement: the answer is the past?",
    "Please answer the question: is the fox quick?",
    "Will it rain?",
)


@pytest.fixture(scope="module")
def dataset() -> ContrastiveDataset:
    """Eight items of different lengths (one bundled, seven short ones), matching letters balanced."""
    bundled = load_bundled("optimism", "test")[0]
    items = [bundled]
    for index, question in enumerate(QUESTIONS):
        text = f"{question}\n\nChoices:\n (A) Yes, I think so.\n (B) No{'.' * index}"
        items.append(make_item(text, *(("(A)", "(B)") if index % 2 else ("(B)", "(A)"))))
    data = ContrastiveDataset("methods-demo", tuple(items))
    assert sum(item.matching == "(A)" for item in data) == 4
    return data


def plain_states(model, tokenizer, text: str) -> tuple[list[int], list[tuple[int, int]], torch.Tensor]:
    """Token ids, character offsets and the residual stream after every block, ``[layer, pos, d]``.

    ``hidden_states[L + 1]`` is block L's output except for the last block, where HF returns it after
    the final norm; that one is read with a forward hook on the last decoder layer instead.
    """
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    captured = {}

    def keep(module, args, output):
        captured["last"] = (output[0] if isinstance(output, tuple) else output).detach().clone()

    handle = model.model.layers[-1].register_forward_hook(keep)
    try:
        with torch.inference_mode():
            out = model(torch.tensor([encoded.input_ids]), output_hidden_states=True)
    finally:
        handle.remove()
    states = [out.hidden_states[layer + 1][0] for layer in range(len(model.model.layers) - 1)]
    states.append(captured["last"][0])
    return list(encoded.input_ids), [tuple(o) for o in encoded.offset_mapping], torch.stack(states).double()


def llama2_text(question: str, answer: str) -> str:
    return f"<s>[INST] {question} [/INST] {answer}"


def letter_index(text: str, offsets: list[tuple[int, int]]) -> int:
    """The token holding the answer letter: the character before the closing parenthesis."""
    assert text.endswith(")")
    target = len(text) - 2
    (index,) = [i for i, (start, end) in enumerate(offsets) if start <= target < end]
    return index


@pytest.fixture(scope="module")
def reference(tiny, plain_hf, dataset):
    """Per item and side: (token ids, answer-letter index, states [layer, pos, d])."""
    out = []
    for item in dataset:
        sides = []
        for answer in (item.matching, item.not_matching):
            text = llama2_text(item.question, answer)
            ids, offsets, states = plain_states(plain_hf, tiny.tokenizer, text)
            index = letter_index(text, offsets)
            assert tiny.tokenizer.decode(ids[index]).strip() == answer[1]
            sides.append((ids, index, states))
        out.append(sides)
    return out


def reference_mean(reference, position) -> torch.Tensor:
    """Mean over pairs of (positive - negative) at ``position(ids, letter_index)``, ``[layer, d]``."""
    diffs = [
        pos[2][:, position(pos[0], pos[1])] - neg[2][:, position(neg[0], neg[1])] for pos, neg in reference
    ]
    return torch.stack(diffs).mean(0)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-layer ``||a - b|| / ||b||``."""
    return (a.double() - b.double()).norm(dim=-1) / b.double().norm(dim=-1)


# ---------------------------------------------------------------------------------------------- CAA


def test_prompt_matches_the_chat_template(tiny, dataset):
    item = dataset[0]
    templated = tiny.tokenizer.apply_chat_template(
        [{"role": "user", "content": item.question}], tokenize=False, add_generation_prompt=True
    )
    assert templated + " " + item.matching == llama2_text(item.question, item.matching)


def test_caa_vector_equals_plain_reference_at_every_layer(tiny, dataset, reference):
    vector = caa_vector(tiny, dataset, layers=None, batch_size=4, progress=False, method="mean_difference")
    expected = reference_mean(reference, lambda ids, letter: letter)
    assert vector.layers == (0, 1, 2, 3) and vector.directions.shape == (4, 64)
    assert (relative_error(vector.directions, expected) < 1e-5).all(), relative_error(
        vector.directions, expected
    )
    p = vector.provenance
    assert (p.site, p.position_rule, p.method, p.n_pairs) == ("resid_post", "answer", "mean_difference", 8)
    assert p.dataset_hash == dataset.content_hash and p.d_model == 64 and p.n_layers == 4


def test_letter_balanced_vector_equals_plain_reference(tiny, dataset, reference):
    """The default (letter-balanced) vector on 4 A- and 2 B-matching items equals the mean of the two
    labels' reference mean differences; the plain mean of the same items differs from it."""
    letters = [item.matching_letter for item in dataset]
    chosen = [i for i, x in enumerate(letters) if x == "A"] + [i for i, x in enumerate(letters) if x == "B"][
        :2
    ]
    subset = dataset.select(sorted(chosen), ":4A2B")
    diffs = {
        i: reference[i][0][2][:, reference[i][0][1]] - reference[i][1][2][:, reference[i][1][1]]
        for i in chosen
    }
    per_label = {x: torch.stack([diffs[i] for i in chosen if letters[i] == x]).mean(0) for x in LETTERS}
    expected = (per_label["A"] + per_label["B"]) / 2
    vector = caa_vector(tiny, subset, layers=None, batch_size=4, progress=False)
    # The label means are large and nearly opposite (the letter); the balanced mean is their small
    # average, so float32 rounding is measured against the label means' norm as well as its own.
    scale = per_label["A"].norm(dim=-1)
    assert ((vector.directions.double() - expected).norm(dim=-1) < 1e-5 * scale).all()
    assert (relative_error(vector.directions, expected) < 1e-3).all()
    p = vector.provenance
    assert (p.method, p.label_counts, p.n_pairs) == ("letter_balanced", {"A": 4, "B": 2}, 6)
    plain_expected = torch.stack(list(diffs.values())).mean(0)
    with pytest.warns(UserWarning, match="mostly the answer letter"):
        plain = caa_vector(tiny, subset, batch_size=4, progress=False, method="mean_difference")
    assert (relative_error(plain.directions, plain_expected) < 1e-5).all()
    assert (relative_error(vector.directions, plain.directions) > 0.5).all()  # not the same vector
    letter = (per_label["A"] - per_label["B"]) / 2
    share = torch.nn.functional.cosine_similarity(plain_expected, letter, dim=-1) ** 2
    assert [plain.provenance.letter_share[str(layer)] for layer in range(4)] == pytest.approx(
        share.tolist(), abs=1e-6
    )


def unchecked(function):
    """``function`` without the test suite's runtime type checker, which refuses a bad Literal with
    its own TypeError before the function's ValueError (the one users get) can be seen."""
    return getattr(function, "__wrapped__", function)


def test_caa_vector_refuses_an_unknown_method(tiny, dataset):
    with pytest.raises(ValueError, match=r"unknown method 'pca'.*'letter_balanced' or 'mean_difference'"):
        unchecked(caa_vector)(tiny, dataset, layers=[1], progress=False, method="pca")


@pytest.mark.parametrize("batch_size", [3, 16])
def test_batched_and_unbatched_agree(tiny, dataset, batch_size):
    single = caa_vector(tiny, dataset, layers=[0, 2, 3], batch_size=1, progress=False)
    batched = caa_vector(tiny, dataset, layers=[0, 2, 3], batch_size=batch_size, progress=False)
    assert batched.layers == single.layers
    assert (relative_error(batched.directions, single.directions) < 1e-5).all()


def test_layer_subset_equals_full_extraction(tiny, dataset):
    full = caa_vector(tiny, dataset, layers=None, progress=False)
    one = caa_vector(tiny, dataset, layers=1, progress=False)
    assert one.layers == (1,) and (relative_error(one.directions[0], full.at(1)) < 1e-6).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_keep_examples(tiny, dataset, reference, dtype):
    acts = extract_contrastive(
        tiny, dataset, layers=[1, 3], batch_size=3, keep_examples=True, example_dtype=dtype, progress=False
    )
    examples = acts.examples
    assert examples is not None
    assert examples.positive.dtype == dtype and examples.positive.shape == (8, 2, 64)
    assert examples.positive_labels == tuple(item.matching_letter for item in dataset)
    assert examples.negative_labels == tuple(item.not_matching[1] for item in dataset)
    tolerance = 1e-5 if dtype == torch.float32 else 2e-3
    for index, (pos, neg) in enumerate(reference):  # examples come back in dataset order
        assert (relative_error(examples.positive[index], pos[2][[1, 3], pos[1]]) < tolerance).all()
        assert (relative_error(examples.negative[index], neg[2][[1, 3], neg[1]]) < tolerance).all()
    kept_mean = (examples.positive.double() - examples.negative.double()).mean(0)
    assert (relative_error(kept_mean, acts.mean_difference) < 20 * tolerance).all()


def side_means(reference, position) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean positive and mean negative activation at ``position(ids, letter_index)``, ``[layer, d]``."""
    means = []
    for side in (0, 1):
        reads = [pair[side][2][:, position(pair[side][0], pair[side][1])] for pair in reference]
        means.append(torch.stack(reads).mean(0))
    return means[0], means[1]


def check_rule(tiny, dataset, reference, rule, position, layers):
    """Both side means to 1e-5 relative; their difference to 1e-5 of the activations' norm.

    At a position after the answer letter the two sides differ only through attention to it, so the
    difference is small and only its absolute error (float32 rounding of the activations) is meaningful.
    """
    acts = extract_contrastive(tiny, dataset, layers=layers, position_rule=rule, batch_size=3, progress=False)
    positive, negative = side_means(reference, position)
    positive, negative = positive[list(layers)], negative[list(layers)]
    assert (relative_error(acts.positive_sum / acts.n_pairs, positive) < 1e-5).all()
    assert (relative_error(acts.negative_sum / acts.n_pairs, negative) < 1e-5).all()
    error = (acts.mean_difference.double() - (positive - negative)).norm(dim=-1)
    assert (error < 1e-5 * positive.norm(dim=-1)).all()
    assert acts.mean_difference.norm() > 0
    return acts


def test_position_rule_last(tiny, dataset, reference):
    acts = check_rule(tiny, dataset, reference, "last", lambda ids, letter: len(ids) - 1, (0, 1, 2, 3))
    assert acts.position_rule == "last"
    assert (
        caa_vector(tiny, dataset, layers=[3], position_rule="last", progress=False).provenance.position_rule
        == "last"
    )


def test_callable_position_rule(tiny, dataset, reference):
    def before_last(prompt: FormattedPrompt) -> int:
        return prompt.last - 1

    # the token before ")" is the answer letter itself, so this rule must agree with "answer"
    acts = check_rule(tiny, dataset, reference, before_last, lambda ids, letter: len(ids) - 2, (0, 3))
    assert acts.position_rule == "before_last"
    answer = extract_contrastive(tiny, dataset, layers=[0, 3], progress=False)
    assert torch.allclose(acts.mean_difference, answer.mean_difference, rtol=1e-5, atol=1e-6)


def test_position_rule_out_of_range(tiny, dataset):
    with pytest.raises(ValueError, match="position rule returned"):
        caa_vector(tiny, dataset, layers=[0], position_rule=lambda prompt: len(prompt), progress=False)


def test_yes_no_items(tiny, plain_hf):
    data = ContrastiveDataset(
        "yes-no", (make_item("Is the ocean big?", " Yes", " No"), make_item("Is rain dry?", " No", " Yes"))
    )
    vector = caa_vector(tiny, data, layers=[2], progress=False)
    diffs = []
    for item in data:
        reads = []
        for answer in (item.matching, item.not_matching):
            text = llama2_text(item.question, answer)
            _, offsets, states = plain_states(plain_hf, tiny.tokenizer, text)
            start = len(text) - len(answer)
            (index,) = [i for i, (s, e) in enumerate(offsets) if s <= start < e]
            reads.append(states[2, index])
        diffs.append(reads[0] - reads[1])
    assert (relative_error(vector.directions[0], torch.stack(diffs).mean(0)) < 1e-5).all()


def test_empty_dataset_cannot_be_constructed():
    with pytest.raises(DatasetError, match="empty"):
        ContrastiveDataset("empty", ())


# ---------------------------------------------------------------------------------------------- PCA


def planted_differences(sign: float = 1.0, pairs: int = 60, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    planted = torch.nn.functional.normalize(torch.randn(3, 64, generator=generator), dim=-1)
    scales = 0.5 + 1.5 * torch.rand(pairs, 1, 1, generator=generator)  # random positive magnitudes
    noise = 0.01 * torch.randn(pairs, 3, 64, generator=generator)
    return planted, sign * planted * scales + noise


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_pca_recovers_a_planted_direction(sign):
    planted, differences = planted_differences(sign)
    directions = pca_directions(differences)
    assert directions.shape == (3, 64) and directions.dtype == torch.float32
    cosine = torch.nn.functional.cosine_similarity(directions, sign * planted, dim=-1)
    assert (cosine > 0.99).all(), cosine
    mean = differences.mean(0)
    assert ((directions * mean).sum(-1) > 0).all()  # the sign agrees with the mean difference
    unit = torch.nn.functional.normalize(directions, dim=-1)
    assert torch.allclose(directions.norm(dim=-1), (mean * unit).sum(-1), rtol=1e-5)


def test_pca_needs_two_pairs():
    with pytest.raises(ValueError, match="at least 2 pairs"):
        pca_directions(torch.randn(1, 2, 64))


def test_pca_with_labels():
    """Pooled centring (or no labels) is the older PCA exactly; within-label centring refuses labels
    that do not fit, an unknown centring, and groups with nothing to vary."""
    _, differences = planted_differences(pairs=10)
    labels = ["A", "B"] * 5
    old = pca_directions(differences)
    assert torch.equal(pca_directions(differences, labels, centring="pooled"), old)
    assert torch.equal(pca_directions(differences, ["A"] * 10), old)  # one label: one group
    with pytest.raises(ValueError, match="9 labels for 10 pairs"):
        pca_directions(differences, labels[:9])
    with pytest.raises(ValueError, match="unknown centring 'within'"):
        unchecked(pca_directions)(differences, labels, centring="within")
    with pytest.raises(ValueError, match="a matching label with at least 2 pairs"):
        pca_directions(differences[:2], ["A", "B"])


def test_pca_vector_on_the_tiny_model(tiny, dataset):
    with_examples = extract_contrastive(tiny, dataset, layers=[1, 2], keep_examples=True, progress=False)
    vector = pca_vector(tiny, with_examples)
    assert vector.layers == (1, 2) and vector.provenance.method == "pca_of_differences; within_label"
    with pytest.warns(UserWarning, match=r"mostly the answer letter .* centring='within_label'"):
        pooled = pca_vector(tiny, with_examples, centring="pooled")
    assert pooled.provenance.method == "pca_of_differences"
    assert ((vector.directions * with_examples.mean_difference).sum(-1) > 0).all()
    without = extract_contrastive(tiny, dataset, layers=[1], progress=False)
    with pytest.raises(ValueError, match="keep_examples=True"):
        pca_vector(tiny, without)


# ---------------------------------------------------------------------------------------------- ActAdd


def manual_actadd(model, pair: PromptPair, layers: list[int]) -> torch.Tensor:
    tokenizer = model.tokenizer
    positive = [tokenizer.bos_token_id, *tokenizer.encode(pair.positive, add_special_tokens=False)]
    negative = [tokenizer.bos_token_id, *tokenizer.encode(pair.negative, add_special_tokens=False)]
    (space,) = tokenizer.encode(" ", add_special_tokens=False)
    width = max(len(positive), len(negative))
    positive += [space] * (width - len(positive))
    negative += [space] * (width - len(negative))
    names = [f"blocks.{layer}.hook_resid_pre" for layer in layers]
    with torch.inference_mode():
        _, pos_cache = model.run_with_cache(torch.tensor([positive]))
        _, neg_cache = model.run_with_cache(torch.tensor([negative]))
    return torch.stack([pos_cache[name][0] - neg_cache[name][0] for name in names])


def test_actadd_vector(tiny):
    pair = PromptPair(
        "weddings", "I talk about weddings constantly", "I do not talk about weddings constantly"
    )
    vector = actadd_vector(tiny, pair, layers=[0, 2])
    expected = manual_actadd(tiny, pair, [0, 2])
    assert vector.is_positional and vector.directions.shape == expected.shape
    assert vector.directions.shape[:2] == (2, expected.shape[1]) and vector.directions.shape[-1] == 64
    assert torch.allclose(vector.directions, expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(vector.directions[:, 0], torch.zeros(2, 64))  # the shared BOS position
    assert vector.directions[1, 1:].norm() > 0
    p = vector.provenance
    assert (p.site, p.method, p.n_pairs, p.position_rule) == ("resid_pre", "actadd", 1, "all")


def test_actadd_equal_length_pair_and_hash(tiny):
    pair = PromptPair("love-hate", "Love", "Hate")
    vector = actadd_vector(tiny, pair, layers=1)
    assert torch.allclose(vector.directions, manual_actadd(tiny, pair, [1]), atol=1e-5, rtol=1e-5)
    expected_hash = hashlib.sha256(b'["Love", "Hate"]').hexdigest()[:16]
    assert vector.provenance.dataset_hash == prompt_pair_hash(pair) == expected_hash
    long = "x" * 70
    assert prompt_pair_hash(PromptPair("a", long + "1", "n")) != prompt_pair_hash(
        PromptPair("a", long + "2", "n")
    )


def test_actadd_refuses_prompts_that_tokenise_alike(tiny):
    """ "Love" and "Love " are the same tokens once the shorter is space-padded: an all-zero vector."""
    pair = PromptPair("trailing-space", "Love", "Love ")
    with pytest.raises(
        ValueError, match=r"prompt pair 'trailing-space' .* all-zero difference .* layers \[0, 2\]"
    ):
        actadd_vector(tiny, pair, layers=[0, 2])


def test_actadd_refuses_identical_texts(tiny):
    # PromptPair refuses identical texts itself; a pair changed after construction must still be caught.
    pair = PromptPair("same", "Love", "Hate")
    object.__setattr__(pair, "negative", "Love")
    with pytest.raises(ValueError, match=r"prompt pair 'same': positive and negative are the same text"):
        actadd_vector(tiny, pair, layers=1)


# ---------------------------------------------------------------------------------------------- arguments and provenance


@pytest.mark.parametrize("batch_size", [0, -1, True])
def test_batch_size_must_be_a_positive_integer(tiny, dataset, batch_size):
    """A batch size of -1 used to process no pair and return an all-zero vector claiming 8 pairs."""
    with pytest.raises(ValueError, match=rf"batch_size must be a positive integer .* got {batch_size!r}"):
        caa_vector(tiny, dataset, layers=[1], batch_size=batch_size, progress=False)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        extract_contrastive(tiny, dataset, layers=[1], batch_size=batch_size, progress=False)


def test_provenance_records_the_settings_that_change_the_values(tiny, dataset):
    vector = caa_vector(tiny, dataset, layers=[1], batch_size=3, progress=False)
    assert vector.provenance.settings == {
        "batch_size": 3,
        "system": None,
        "style": "auto",
        "model_dtype": "float32",
    }
    acts = extract_contrastive(
        tiny, dataset, layers=[1], batch_size=5, system="Be brief.", keep_examples=True,
        example_dtype=torch.float16, progress=False,
    )  # fmt: skip
    settings = pca_vector(tiny, acts).provenance.settings
    assert (settings["batch_size"], settings["system"], settings["example_dtype"]) == (
        5,
        "Be brief.",
        "float16",
    )
    pair = PromptPair("love-hate", "Love", "Hate")
    assert actadd_vector(tiny, pair, layers=1).provenance.settings["prepend_bos"] is True
    assert actadd_vector(tiny, pair, layers=1, prepend_bos=False).provenance.settings["prepend_bos"] is False


def test_provenance_records_the_weights_fingerprint(tiny, dataset):
    from caa_lens.identity import model_identity

    vector = caa_vector(tiny, dataset, layers=[1], progress=False)
    assert vector.provenance.model_weights_hash == model_identity(tiny).weights_hash != ""
