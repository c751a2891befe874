"""The broker: the bus model it enforces (peers, the driver core, sync calls,
locks and lockdep, the lifecycle tables) without I/O, and the broker process
that drives it from its sockets (``server``)."""
