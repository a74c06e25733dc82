"""Cosine similarity between the steering vectors of every pair of layers, per behaviour.

Usage: python figures/layer_similarity.py RESULTS_DIR [--out DIR]   (RESULTS_DIR written by `caa-lens demo`;
default DIR: RESULTS_DIR/figures)
"""

from analysis.plots import script_main

if __name__ == "__main__":
    script_main("layer_similarity")
