"""Every entry point that records a run, as a ``Task`` run by the one lifecycle (``lifecycle``).

``cli/<name>.py`` parses and makes one call into ``tasks/<name>.py``, which records the run; the
work itself is the domain room (``pipeline``, ``mixed``, ``regenerate``, ``publish``, ``compare``,
``equal_bits``, ``export``). No Hydra, no MLflow: the tracking interface only.
"""
