"""The durable runtime: inbox, dispatcher, outbox, timers and the send gate, one turn at a time."""
