"""Paired effect on p(matching) against layer (one line per multiplier) and against multiplier at the focus
layer (one line per behaviour).

Usage: python figures/sweep.py RESULTS_DIR [--out DIR]   (RESULTS_DIR written by `caa-lens demo`;
default DIR: RESULTS_DIR/figures)
"""

from analysis.plots import script_main

if __name__ == "__main__":
    script_main("sweep")
