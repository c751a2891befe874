"""The parent half of one scenario written three ways (see docs/patterns.md).

``notifier`` (mlx5-style notifier chains), ``ops`` (ice/irdma-style ops structs)
and ``contract`` (the proposal's event contract: auxipc's own events). Each is a
parent model the child drivers of ``child/patterns`` bind to; ``common`` is the
scenario they share, which is left out of the line counts.
"""
