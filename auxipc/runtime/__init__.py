"""What every parent and child process runs: registration, the transport, the
dispatch of what arrives, handler contexts and locks, and the publishing of
events."""
