"""PCA of positive and negative activations over layers, coloured by side, marked by answer letter.

Usage: python figures/pca.py RESULTS_DIR [OUT_DIR]   (RESULTS_DIR written by `caa-lens demo`)
"""

from analysis.figures import script_main

if __name__ == "__main__":
    script_main("pca")
