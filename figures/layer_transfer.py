"""Effect of the vector read at layer i applied at layer j.

Usage: python figures/layer_transfer.py RESULTS_DIR [--out DIR]   (RESULTS_DIR written by `caa-lens demo`;
default DIR: RESULTS_DIR/figures)
"""

from analysis.plots import script_main

if __name__ == "__main__":
    script_main("layer_transfer")
