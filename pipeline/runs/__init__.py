"""Run folders: training heads into them, and using them (predict, evaluate, export).

The only package that uses both stages: a run records which features its
head was trained on, and predicting rebuilds that extractor.
"""
