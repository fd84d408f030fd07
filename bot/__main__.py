"""`python -m bot` runs the `consentbot` command line."""

from bot.cli import main

raise SystemExit(main())
