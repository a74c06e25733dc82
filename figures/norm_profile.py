"""Vector norm, residual norms at read and steered positions, and their ratio, by layer.

Usage: python figures/norm_profile.py RESULTS_DIR [--out DIR]   (RESULTS_DIR written by `caa-lens demo`;
default DIR: RESULTS_DIR/figures)
"""

from analysis.plots import script_main

if __name__ == "__main__":
    script_main("norm_profile")
