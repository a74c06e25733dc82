"""Cosine similarity between behaviours' vectors at a middle layer.

Usage: python figures/behaviour_similarity.py RESULTS_DIR [--out DIR]   (RESULTS_DIR written by `caa-lens demo`;
default DIR: RESULTS_DIR/figures)
"""

from analysis.plots import script_main

if __name__ == "__main__":
    script_main("behaviour_similarity")
