"""Share of completions with a wedding word against the coefficient, one line per layer, with the fluency
cost (ActAdd's topic experiment).

Usage: python figures/actadd_topic.py RESULTS_DIR [--out DIR]   (RESULTS_DIR written by `caa-lens actadd ...`;
default DIR: RESULTS_DIR)
"""

from analysis.plots import script_main

if __name__ == "__main__":
    script_main("actadd_topic")
