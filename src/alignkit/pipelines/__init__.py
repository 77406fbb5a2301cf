"""Experiments that train and then evaluate: the demo (SFT → pairs → DPO → report) and benchmark suites.

This layer sits above ``algorithms`` and ``evaluation``: it may import both, and nothing below imports it.
"""
