"""The pure core: values, flows, consent rules and the send gate.

Nothing here performs I/O, touches asyncio or reads the clock: time comes in as ``now``.
"""
