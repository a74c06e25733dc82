"""Perplexity ratio steered / unsteered of related and unrelated texts against the coefficient (ActAdd's
perplexity experiment).

Usage: python figures/actadd_perplexity.py RESULTS_DIR [--out DIR]   (RESULTS_DIR written by `caa-lens actadd ...`;
default DIR: RESULTS_DIR)
"""

from analysis.plots import script_main

if __name__ == "__main__":
    script_main("actadd_perplexity")
