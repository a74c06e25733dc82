"""Cosine to the full-data vector, split-half stability and steering effect against the number of pairs.

Usage: python figures/sample_size.py RESULTS_DIR [--out DIR]   (RESULTS_DIR written by `caa-lens demo`;
default DIR: RESULTS_DIR/figures)
"""

from analysis.plots import script_main

if __name__ == "__main__":
    script_main("sample_size")
