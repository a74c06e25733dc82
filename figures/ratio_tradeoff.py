"""Behaviour change and perplexity as the ratio ||m v|| / ||resid|| grows.

Usage: python figures/ratio_tradeoff.py RESULTS_DIR [--out DIR]   (RESULTS_DIR written by `caa-lens demo`;
default DIR: RESULTS_DIR/figures)
"""

from analysis.plots import script_main

if __name__ == "__main__":
    script_main("ratio_tradeoff")
