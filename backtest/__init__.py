"""Backtests: replay labelled data through the gateway's decisions and judge the alerts.

:mod:`backtest.episodes` turns labels into fault episodes and matches alert events to
them (event-level recall, detection delay, false alerts per machine-day, pointwise
side figures); :mod:`backtest.report` formats the result as text, JSON or Markdown.
"""
