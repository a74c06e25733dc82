"""Perplexity ratio steered / unsteered of related and unrelated texts against the coefficient (ActAdd's perplexity experiment).

Usage: python figures/actadd_perplexity.py RESULTS_DIR [OUT_DIR]   (RESULTS_DIR written by `caa-lens actadd perplexity`)
"""

from analysis.actadd_plots import actadd_script_main

if __name__ == "__main__":
    actadd_script_main("perplexity")
