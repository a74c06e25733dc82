"""Progress of the adversarial reversal search.

Usage: python figures/reversal.py RESULTS_DIR [OUT_DIR]   (RESULTS_DIR written by `caa-lens demo`)
"""

from analysis.figures import script_main

if __name__ == "__main__":
    script_main("reversal")
