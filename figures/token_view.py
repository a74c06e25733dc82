"""Per-token projection of the residual stream onto the vector, prompt and steered generation.

Usage: python figures/token_view.py RESULTS_DIR [--out DIR]   (RESULTS_DIR written by `caa-lens demo`;
default DIR: RESULTS_DIR/figures)
"""

from analysis.plots import script_main

if __name__ == "__main__":
    script_main("token_view")
