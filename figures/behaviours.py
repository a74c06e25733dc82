"""The headline: each behaviour's held-out effect in the metric it is read by, with its interval, the null
band of random same-norm vectors and the fluency cost.

Usage: python figures/behaviours.py RESULTS_DIR [--out DIR]   (RESULTS_DIR written by `caa-lens demo`;
default DIR: RESULTS_DIR/figures)
"""

from analysis.plots import script_main

if __name__ == "__main__":
    script_main("behaviours")
