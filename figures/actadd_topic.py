"""Share of completions with a wedding word against the coefficient, one line per layer, with the fluency cost (ActAdd's topic experiment).

Usage: python figures/actadd_topic.py RESULTS_DIR [OUT_DIR]   (RESULTS_DIR written by `caa-lens actadd weddings`)
"""

from analysis.actadd_plots import actadd_script_main

if __name__ == "__main__":
    actadd_script_main("weddings")
