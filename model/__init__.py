"""Anomaly models: load CSVs, train detectors, version artifacts, score readings.

Services only need :mod:`model.scorer` (``load_scorer`` / ``Scorer``), plus
:mod:`model.stream_features` (per-device rolling features) and :mod:`model.drift`
(PSI input-drift monitor) when they compute those.  Training and the CLI
(``python -m model``) live in :mod:`model.training`, :mod:`model.compare`,
:mod:`model.retrain` and :mod:`model.cli`.  Nothing is imported here so that
``import model.scorer`` stays light.
"""
