"""`python -m service`: the container entry point; every setting comes from RLHF_* environment variables.

RLHF_BUNDLE=/bundles/rm-v1 RLHF_HOST=0.0.0.0 python -m service
"""

from __future__ import annotations

import sys

from pydantic import ValidationError

from service.bundle import BundleError
from service.providers import ProviderUnavailable
from service.server import preflight, serve
from service.settings import ServiceSettings


def main() -> int:
    try:
        settings = ServiceSettings()
    except ValidationError as exc:
        print(f"invalid RLHF_* configuration:\n{exc}", file=sys.stderr)
        return 2
    try:
        preflight(settings)
    except (BundleError, ProviderUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    serve(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
