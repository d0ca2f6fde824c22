from __future__ import annotations

from config_server.cli import main

main()
