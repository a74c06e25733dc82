"""VADER positive rate of replies to negative sentences against the coefficient, with the fluency cost
(ActAdd's sentiment experiment).

Usage: python figures/actadd_sentiment.py RESULTS_DIR [--out DIR]   (RESULTS_DIR written by `caa-lens actadd ...`;
default DIR: RESULTS_DIR)
"""

from analysis.plots import script_main

if __name__ == "__main__":
    script_main("actadd_sentiment")
