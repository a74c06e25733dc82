"""Per-token projection of the residual stream onto the vector, prompt and steered generation.

Usage: python figures/token_view.py RESULTS_DIR [OUT_DIR]   (RESULTS_DIR written by `caa-lens demo`)
"""

from analysis.figures import script_main

if __name__ == "__main__":
    script_main("token_view")
