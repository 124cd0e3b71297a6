"""Anomaly models: load CSVs, train detectors, version artifacts, score readings.

Services only need :mod:`model.scorer` (``load_scorer`` / ``Scorer``); training and
the CLI (``python -m model``) live in :mod:`model.training` and :mod:`model.cli`.
Nothing is imported here so that ``import model.scorer`` stays light.
"""
