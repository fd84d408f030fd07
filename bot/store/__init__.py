"""Storage ports (``base``) and their adapters (``memory``, ``mongo``); ``embedded`` runs a local server."""
