"""Behaviour change and perplexity as the ratio ||m v|| / ||resid|| grows.

Usage: python figures/ratio_tradeoff.py RESULTS_DIR [OUT_DIR]   (RESULTS_DIR written by `caa-lens demo`)
"""

from analysis.figures import script_main

if __name__ == "__main__":
    script_main("ratio_tradeoff")
