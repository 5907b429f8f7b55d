"""Framework adapters: ``pathmetric.adapters.torch_pruning``, ``.nni``, ``.neural_compressor``.

Each adapter translates a framework's objects into engine calls and back; none holds mathematics
of its own, and the engine (``pathmetric``) never imports a framework.
"""
