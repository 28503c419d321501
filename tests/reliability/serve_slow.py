"""`python -m tests.reliability.serve_slow`: the production server (`DrainingServer`, real uvicorn, real
onnxruntime, its SIGTERM drain) with every onnxruntime run delayed by RLHF_TEST_BACKEND_DELAY seconds.

The delay makes capacity a known number that does not depend on how busy the machine's cores are
(batch of `max_batch_pairs` per `delay` seconds), so "2x the saturation rate" is reachable by a
Python load generator and a SIGTERM reliably lands while requests are in flight.
"""

from __future__ import annotations

import logging
import os

from service.app import create_app
from service.server import build_server
from service.settings import ServiceSettings
from tests.service.conftest import slow_factory


def main() -> None:
    settings = ServiceSettings()
    delay = float(os.environ.get("RLHF_TEST_BACKEND_DELAY", "0"))
    logging.basicConfig(level=settings.log_level.upper())
    build_server(settings, create_app(settings, backend_factory=slow_factory(delay))).run()


if __name__ == "__main__":
    main()
