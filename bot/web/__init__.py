"""The aiohttp shell: webhook, health, metrics, sandbox mount and the agent console."""
