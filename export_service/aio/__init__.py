"""Off the event loop: the hops to a thread pool (offload), a blocking byte
iterator pulled in batches (streaming), download slots, and when a client
counts as stalled (send_progress). Nothing else of the service."""
