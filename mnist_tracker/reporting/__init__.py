"""Reporting: the comparison table (``compare``, ``render``), the HTML report, the figures."""
