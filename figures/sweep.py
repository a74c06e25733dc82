"""Behaviour probability against layer (one line per multiplier) and against multiplier at the focus layer (one line per behaviour).

Usage: python figures/sweep.py RESULTS_DIR [OUT_DIR]   (RESULTS_DIR written by `caa-lens demo`)
"""

from analysis.figures import script_main

if __name__ == "__main__":
    script_main("sweep")
