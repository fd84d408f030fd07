"""The WhatsApp Cloud API channel: the only package that knows Meta's wire format.

- :mod:`bot.whatsapp.signature` checks ``X-Hub-Signature-256`` over the raw webhook bytes.
- :mod:`bot.whatsapp.payloads` turns webhook JSON into :mod:`bot.core.messages` values.
- :mod:`bot.whatsapp.outgoing` turns :class:`~bot.core.messages.Outbound` into Graph API bodies and
  checks every documented length/count limit (``LIMITS``).
- :mod:`bot.whatsapp.graph_errors` maps Graph error codes to exception classes and retry classes.
- :mod:`bot.whatsapp.pacing` paces sends per business number and per recipient.
- :mod:`bot.whatsapp.client` is the Graph API client.
- :mod:`bot.whatsapp.simulator` is a fake Graph API plus a phone page, for the sandbox and the tests.
"""
