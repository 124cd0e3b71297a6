"""The prediction API and web page: ``create_app`` in :mod:`api.app`, served by
gunicorn through ``python -m api`` (see :mod:`api.__main__`).

Kept free of imports so that ``python -m api`` can switch prometheus_client to
multi-process mode before anything imports it.
"""
