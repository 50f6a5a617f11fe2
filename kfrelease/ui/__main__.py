"""``python -m kfrelease.ui --port N``: serve the web UI on 127.0.0.1 (the stack starts it this way)."""

from __future__ import annotations

import argparse
import logging

from kfrelease.config import LOG_FORMAT, Settings
from kfrelease.storage import store_for
from kfrelease.ui.views import Reader


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="kfrelease web UI (read-only)")
    parser.add_argument("--port", type=int, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    import uvicorn  # heavy: uvicorn

    from kfrelease.ui.app import create_app  # heavy: pandas, starlette

    settings = Settings.from_env()
    app = create_app(Reader(store_for("data-scientist", settings)))  # the read-only identity
    uvicorn.run(app, host="127.0.0.1", port=args.port or settings.port("ui"), log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
