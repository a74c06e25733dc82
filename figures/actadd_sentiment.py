"""VADER positive rate of replies to negative sentences against the coefficient, with the fluency cost (ActAdd's sentiment experiment).

Usage: python figures/actadd_sentiment.py RESULTS_DIR [OUT_DIR]   (RESULTS_DIR written by `caa-lens actadd sentiment`)
"""

from analysis.actadd_plots import actadd_script_main

if __name__ == "__main__":
    actadd_script_main("sentiment")
