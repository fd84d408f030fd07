"""ConsentBot: consent-first WhatsApp conversations (double opt-in, preferences, easy opt-out)."""

__version__ = "0.1.0"
