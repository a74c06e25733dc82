"""caa_lens: contrastive activation engineering (CAA, ActAdd, steering patterns) on TransformerLens.

The names in ``__all__`` are the library a notebook needs: load a model, build contrastive data, extract
activations, compute, save and inject steering vectors, generate, score and sweep with paired effects,
intervals and random-vector nulls, and look at token-level views.

>>> import caa_lens as cl
>>> model = cl.tiny_model()
>>> cl.hook_name(model, 1)
'blocks.1.hook_resid_post'

Beneath them, these modules document an API of their own (their ``__all__``), for code that builds jobs,
command lines or new metrics on the library (``analysis/`` does); anything else is internal:

- ``caa_lens.prefix``: the one prefix/KV-cache engine (run shared prefixes once, then suffixes steered).
- ``caa_lens.jobs``: the job runner (declared stages, skip on rerun, manifest, results directories).
- ``caa_lens.evaluation``: the A/B letter metric on prefix batches (scoring prompts, suffix scores).
- ``caa_lens.likelihood`` and ``caa_lens.answer_texts``: the letter-free metric and its option texts.
- ``caa_lens.sweep``, ``caa_lens.sweep_io``, ``caa_lens.sweep_effects``, ``caa_lens.sweep_controls``,
  ``caa_lens.sweep_shards``: running sweeps, their results file, effect tables, null controls, shards.
- ``caa_lens.scorers`` and ``caa_lens.lexicons``: open-ended scorers and their phrase and word lists.
- ``caa_lens.open_ended``: steered generation grids and their effects tables.
- ``caa_lens.capability`` and ``caa_lens.ood``: capability cost, perplexity, OOD prompts and the judge.
- ``caa_lens.data`` and ``caa_lens.prompts``: datasets, chat formatting and padding.
- ``caa_lens.models``: model specs, loading and the default model's cache.
- ``caa_lens.steering``, ``caa_lens.residuals``, ``caa_lens.multipliers``: injection rows, norms, checks.
- ``caa_lens.methods``, ``caa_lens.letter_balance``, ``caa_lens.stats``: vector methods, the letter
  balance, and the statistics (bootstrap, null bands, letter axis).
- ``caa_lens.extraction``, ``caa_lens.vector_files``, ``caa_lens.views``: activations, vector files, views.
- ``caa_lens.files`` and ``caa_lens.outputs``: atomic writes, and the rule that a user's file is never
  replaced.
"""

from caa_lens.answer_texts import option_texts
from caa_lens.capability import CapabilityScore, ab_capability, majority_baseline, perplexity
from caa_lens.data import (
    BUNDLED_BEHAVIOURS,
    FIBONACCI_SIZES,
    ContrastiveDataset,
    ContrastiveItem,
    DatasetError,
    PromptPair,
    bundled_prompt_pairs,
    load_behaviour_dataset,
    load_bundled,
    load_prompt_pairs,
    make_item,
    nested_subsets,
    resolve_dataset,
    train_test_split,
)
from caa_lens.evaluation import behaviour_probabilities
from caa_lens.export import ControlVectorError, export_control_vector_gguf, load_control_vector_gguf
from caa_lens.extraction import ContrastiveActivations, PairActivations, extract_contrastive
from caa_lens.generation import GenerationResult, generate
from caa_lens.hooks import check_layers, hook_name, layer_at_depth, scaled_layers
from caa_lens.identity import ModelIdentity, model_identity
from caa_lens.jobs import Job, Stage
from caa_lens.letter_balance import LETTER_SHARE_LIMIT, LabelMeans, label_means
from caa_lens.lexicons import REFUSAL_PHRASES, WEDDING_WORDS
from caa_lens.likelihood import likelihood_scores
from caa_lens.methods import actadd_vector, caa_vector, contrastive_vector, mean_difference_vector, pca_vector
from caa_lens.models import DEFAULT_MODEL, TINY_MODEL, ModelNotAvailableError, check_model_spec, load_model
from caa_lens.multipliers import check_multipliers
from caa_lens.ood import ModelJudgeScorer, OODPrompt, load_ood_prompts, run_ood
from caa_lens.open_ended import GenerationSettings, examples, open_ended_effects, steered_generations
from caa_lens.outputs import OutputError
from caa_lens.prompt_pair import extract_prompt_pair
from caa_lens.prompts import FormattedPrompt, format_prompt
from caa_lens.provenance import Provenance, VectorMismatchError
from caa_lens.residuals import multiplier_for_ratio, residual_norm, residual_norms, residual_stack
from caa_lens.scorers import (
    DegeneracyScorer,
    FluencyScorer,
    JudgeScorer,
    PhraseScorer,
    SentimentScorer,
    TextScorer,
    WordRateScorer,
    check_scorer_names,
    named_scorers,
    score_generations,
)
from caa_lens.stats import (
    Effect,
    NullBand,
    effects_table,
    letter_axis,
    letter_balanced_mean,
    letter_share,
    null_band,
    paired_effect,
    random_like,
    with_null,
)
from caa_lens.steering import Injection, steering
from caa_lens.sweep import run_sweep
from caa_lens.sweep_effects import effects_summary, summarize
from caa_lens.sweep_io import load_results, merge_results
from caa_lens.tiny import tiny_model
from caa_lens.vector_files import CorruptVectorError, check_vector_output, load_vector, save_vector
from caa_lens.vectors import SteeringVector, equalize_norms
from caa_lens.views import TokenProjection, save_html, show, token_projections

__version__ = "0.1.0"

# The documented module APIs (see the docstring): tests/test_public_api.py holds clients to these.
SUBMODULE_APIS = (
    "caa_lens.prefix",
    "caa_lens.jobs",
    "caa_lens.evaluation",
    "caa_lens.likelihood",
    "caa_lens.answer_texts",
    "caa_lens.sweep",
    "caa_lens.sweep_io",
    "caa_lens.sweep_effects",
    "caa_lens.sweep_controls",
    "caa_lens.sweep_shards",
    "caa_lens.scorers",
    "caa_lens.lexicons",
    "caa_lens.open_ended",
    "caa_lens.capability",
    "caa_lens.ood",
    "caa_lens.data",
    "caa_lens.prompts",
    "caa_lens.models",
    "caa_lens.steering",
    "caa_lens.residuals",
    "caa_lens.multipliers",
    "caa_lens.methods",
    "caa_lens.letter_balance",
    "caa_lens.stats",
    "caa_lens.extraction",
    "caa_lens.vector_files",
    "caa_lens.views",
    "caa_lens.files",
    "caa_lens.outputs",
)

__all__ = [
    "BUNDLED_BEHAVIOURS",
    "DEFAULT_MODEL",
    "FIBONACCI_SIZES",
    "LETTER_SHARE_LIMIT",
    "REFUSAL_PHRASES",
    "SUBMODULE_APIS",
    "TINY_MODEL",
    "WEDDING_WORDS",
    "CapabilityScore",
    "ContrastiveActivations",
    "ContrastiveDataset",
    "ContrastiveItem",
    "ControlVectorError",
    "CorruptVectorError",
    "DatasetError",
    "DegeneracyScorer",
    "Effect",
    "FluencyScorer",
    "FormattedPrompt",
    "GenerationResult",
    "GenerationSettings",
    "Injection",
    "Job",
    "JudgeScorer",
    "LabelMeans",
    "ModelIdentity",
    "ModelJudgeScorer",
    "ModelNotAvailableError",
    "NullBand",
    "OODPrompt",
    "OutputError",
    "PairActivations",
    "PhraseScorer",
    "PromptPair",
    "Provenance",
    "SentimentScorer",
    "Stage",
    "SteeringVector",
    "TextScorer",
    "TokenProjection",
    "VectorMismatchError",
    "WordRateScorer",
    "ab_capability",
    "actadd_vector",
    "behaviour_probabilities",
    "bundled_prompt_pairs",
    "caa_vector",
    "check_layers",
    "check_model_spec",
    "check_multipliers",
    "check_scorer_names",
    "check_vector_output",
    "contrastive_vector",
    "effects_summary",
    "effects_table",
    "equalize_norms",
    "examples",
    "export_control_vector_gguf",
    "extract_contrastive",
    "extract_prompt_pair",
    "format_prompt",
    "generate",
    "hook_name",
    "label_means",
    "layer_at_depth",
    "letter_axis",
    "letter_balanced_mean",
    "letter_share",
    "likelihood_scores",
    "load_behaviour_dataset",
    "load_bundled",
    "load_control_vector_gguf",
    "load_model",
    "load_ood_prompts",
    "load_prompt_pairs",
    "load_results",
    "load_vector",
    "majority_baseline",
    "make_item",
    "mean_difference_vector",
    "merge_results",
    "model_identity",
    "multiplier_for_ratio",
    "named_scorers",
    "nested_subsets",
    "null_band",
    "open_ended_effects",
    "option_texts",
    "paired_effect",
    "pca_vector",
    "perplexity",
    "random_like",
    "residual_norm",
    "residual_norms",
    "residual_stack",
    "resolve_dataset",
    "run_ood",
    "run_sweep",
    "save_html",
    "save_vector",
    "scaled_layers",
    "score_generations",
    "show",
    "steered_generations",
    "steering",
    "summarize",
    "tiny_model",
    "token_projections",
    "train_test_split",
    "with_null",
]
