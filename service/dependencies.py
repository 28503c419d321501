"""FastAPI dependencies: the one place that knows where an app keeps its :class:`ServiceState`.

`create_app` stores the state on ``app.state.service``; routes and the bearer-token checks declare
what they need (``state: StateDep`` or ``settings: SettingsDep``) instead of reaching into the app.
"""

from __future__ import annotations

from typing import Annotated, cast

from fastapi import Depends, Request

from service.settings import ServiceSettings
from service.state import ServiceState


def get_state(request: Request) -> ServiceState:
    return cast(ServiceState, request.app.state.service)


def get_settings(state: Annotated[ServiceState, Depends(get_state)]) -> ServiceSettings:
    return state.settings


StateDep = Annotated[ServiceState, Depends(get_state)]
SettingsDep = Annotated[ServiceSettings, Depends(get_settings)]
