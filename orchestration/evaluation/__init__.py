"""Evaluation: V-STAR metrics (:mod:`.vstar`), answer judges (:mod:`.judge`) and grounding
diagnostics (:mod:`.grounding`).

Everything here is pure Python + numpy (no torch, no Ray) so metrics can be recomputed from saved
predictions on any machine; importing this package stays cheap for ``stgrl --help``.
"""
