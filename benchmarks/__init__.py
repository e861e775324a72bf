"""wellfed's benchmarks: the suite (``python -m benchmarks.run``) and single-scenario scripts.

See ``benchmarks/README.md`` for what each scenario measures and how to run it.
"""
