"""Held-out linear-probe accuracy by layer, for behaviour side and for answer letter.

Usage: python figures/separability.py RESULTS_DIR [--out DIR]   (RESULTS_DIR written by `caa-lens demo`;
default DIR: RESULTS_DIR/figures)
"""

from analysis.plots import script_main

if __name__ == "__main__":
    script_main("separability")
