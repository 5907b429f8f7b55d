"""The engine's core: graph types, capture, rules, lifted evaluation, scaled arithmetic.

Imports nothing from the analyses above it, the app or the adapters (docs/design.md, "Architecture")."""
