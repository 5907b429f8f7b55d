"""The application layer: command-line interface, model specs, plots, the digits demo.

Built on the public API of :mod:`pathmetric`."""
