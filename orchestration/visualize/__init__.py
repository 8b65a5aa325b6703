"""Visualize a model's evidence: claimed boxes and times drawn over the decoded frames next to the
ground truth (PNG grid, animated GIF) and a static HTML page browsing a run's samples.

Light at import; decord, PIL and numpy are imported by the modules that draw.
"""
