"""The driver half of one scenario written three ways (see docs/patterns.md).

``notifier`` binds ``mlx5n.eth``, ``ops`` binds ``iceops.eth``, ``contract``
binds ``contract.eth``; ``common`` is the scenario they share, left out of the
line counts. Each side keeps its own copy of the numbers and struct layouts it
shares with its parent, as two modules built from one header do.
"""
