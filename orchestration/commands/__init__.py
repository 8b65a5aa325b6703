"""One module per ``stgrl`` subcommand (or group). Each defines ``NAME``, ``HELP``,
``configure(parser)`` and ``run(args) -> int``. Modules here stay light at import: heavy imports
(torch, Ray, transformers) happen inside ``run`` so ``stgrl --help`` is instant.
"""
