"""Where an app keeps its :class:`ServiceState`: the one place that knows it.

`create_app` stores the state on ``app.state.service``; everything that needs it asks here, with
:func:`state_of` (given the request) or, in a route that takes nothing else from the request, with the
FastAPI dependency ``state: StateDep``. Nothing else reaches into the app.

Why the scoring routes call :func:`state_of` rather than declare a dependency: FastAPI resolves every
declared dependency per request (a recursive solve, cache keys, type checks), and under one pair per
request (RL trainers) each dependency cost a measurable share of the service's CPU per pair. So the
scoring routes declare only what must run before the body is validated (the API-key check) and what
reads the URL (`service.trainer_penalty`). Every dependency is ``async def`` though none awaits
anything: FastAPI runs a plain ``def`` dependency in its thread pool, a round trip between threads per
request. A dependency must therefore never block (no I/O, no lock waits).
"""

from __future__ import annotations

from typing import Annotated, cast

from fastapi import Depends, Request

from service.state import ServiceState


def state_of(request: Request) -> ServiceState:
    """The state of the app serving `request`."""
    return cast(ServiceState, request.app.state.service)


async def get_state(request: Request) -> ServiceState:
    return state_of(request)


StateDep = Annotated[ServiceState, Depends(get_state)]
