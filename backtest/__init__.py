"""Backtests: replay labelled data through the gateway's decisions and judge the alerts.

:mod:`backtest.replay` runs readings through :mod:`gateway.detection`;
:mod:`backtest.episodes` turns labels into fault episodes and matches alert events to
them; :mod:`backtest.summary` counts event-level recall, detection delay and false
alerts per machine-day (with :mod:`backtest.machine_state` for where they fall);
:mod:`backtest.report` formats the result as text, JSON or Markdown.
"""
