"""PCA of positive and negative activations over layers, coloured by side, marked by answer letter.

Usage: python figures/pca.py RESULTS_DIR [--out DIR]   (RESULTS_DIR written by `caa-lens demo`;
default DIR: RESULTS_DIR/figures)
"""

from analysis.plots import script_main

if __name__ == "__main__":
    script_main("pca")
