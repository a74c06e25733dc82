"""caa_lens: contrastive activation engineering (CAA, ActAdd, steering patterns) on TransformerLens.

>>> import caa_lens as cl
>>> model = cl.tiny_model()
>>> cl.hook_name(model, 1)
'blocks.1.hook_resid_post'
"""

from caa_lens.capability import CapabilityScore, ab_capability, majority_baseline
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
from caa_lens.export import ControlVectorError, export_control_vector_gguf, load_control_vector_gguf
from caa_lens.extraction import (
    ContrastiveActivations,
    PairActivations,
    extract_contrastive,
    extract_prompt_pair,
)
from caa_lens.generation import GenerationResult, generate
from caa_lens.hooks import check_layers, hook_name
from caa_lens.likelihood import likelihood_scores, option_texts
from caa_lens.methods import (
    LETTER_SHARE_LIMIT,
    LabelMeans,
    actadd_vector,
    caa_vector,
    contrastive_vector,
    label_means,
    mean_difference_vector,
    pca_vector,
)
from caa_lens.models import (
    DEFAULT_MODEL,
    TINY_MODEL,
    ModelNotAvailableError,
    check_model_spec,
    load_model,
    model_identity,
)
from caa_lens.ood import OODPrompt, load_ood_prompts
from caa_lens.open_ended import GenerationSettings, examples, open_ended_effects, steered_generations
from caa_lens.outputs import OutputError
from caa_lens.prompts import FormattedPrompt, format_prompt
from caa_lens.residuals import residual_norms, residual_stack
from caa_lens.scorers import (
    REFUSAL_PHRASES,
    WEDDING_WORDS,
    DegeneracyScorer,
    FluencyScorer,
    JudgeScorer,
    PhraseScorer,
    SentimentScorer,
    WordRateScorer,
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
from caa_lens.steering import Injection, multiplier_for_ratio, residual_norm, steering
from caa_lens.sweep import check_multipliers, effects_summary, load_results, run_sweep, summarize
from caa_lens.tiny import tiny_model
from caa_lens.vectors import (
    CorruptVectorError,
    Provenance,
    SteeringVector,
    VectorMismatchError,
    check_vector_output,
    equalize_norms,
    load_vector,
    save_vector,
)

__version__ = "0.1.0"

__all__ = [
    "BUNDLED_BEHAVIOURS",
    "DEFAULT_MODEL",
    "FIBONACCI_SIZES",
    "LETTER_SHARE_LIMIT",
    "REFUSAL_PHRASES",
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
    "JudgeScorer",
    "LabelMeans",
    "ModelNotAvailableError",
    "NullBand",
    "OODPrompt",
    "OutputError",
    "PairActivations",
    "PhraseScorer",
    "PromptPair",
    "Provenance",
    "SentimentScorer",
    "SteeringVector",
    "VectorMismatchError",
    "WordRateScorer",
    "ab_capability",
    "actadd_vector",
    "bundled_prompt_pairs",
    "caa_vector",
    "check_layers",
    "check_model_spec",
    "check_multipliers",
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
    "model_identity",
    "multiplier_for_ratio",
    "nested_subsets",
    "null_band",
    "open_ended_effects",
    "option_texts",
    "paired_effect",
    "pca_vector",
    "random_like",
    "residual_norm",
    "residual_norms",
    "residual_stack",
    "resolve_dataset",
    "run_sweep",
    "save_vector",
    "score_generations",
    "steered_generations",
    "steering",
    "summarize",
    "tiny_model",
    "train_test_split",
    "with_null",
]
