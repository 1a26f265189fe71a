"""Which version of each model serves: the versions with their metrics and
origin, and pinning one (a rollback) or unpinning (back to the newest)."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from services.gateway import registry
from services.gateway.deps import Authorized, BackendDep, LayoutDep, ModelName
from services.gateway.errors import ModelNotFound
from services.gateway.schemas import ErrorBody, RegistryList, RegistryModel

router = APIRouter(prefix="/v1/registry", tags=["registry"], dependencies=Authorized,
                   responses={401: {"model": ErrorBody}, 404: {"model": ErrorBody}})


class PinRequest(BaseModel):
    version: int | None = Field(..., ge=1, description="The version to serve; null: the newest.")


@router.get("/models", response_model=RegistryList)
async def registry_models(layout: LayoutDep, backend: BackendDep):
    names = sorted(p.name for p in layout.models.iterdir()
                   if p.is_dir() and not p.name.startswith(".")) if layout.models.is_dir() else []
    out = []
    for name in names:
        try:
            out.append(await registry.model_entry(layout, backend, name))
        except (ValueError, ModelNotFound):  # not a model folder
            continue
    return {"models": out}


@router.get("/models/{name}", response_model=RegistryModel)
async def registry_model(name: ModelName, layout: LayoutDep, backend: BackendDep):
    return await registry.model_entry(layout, backend, name)


@router.put("/models/{name}/pin", response_model=RegistryModel, responses={409: {"model": ErrorBody}})
async def pin_model(name: ModelName, body: PinRequest, layout: LayoutDep, backend: BackendDep):
    """Serve ``version`` from now on (TF Serving's ``model_version_policy: specific``,
    the in-process backend alike), or with null the newest again. Predictions
    continue throughout: the new version loads before it replaces the old one."""
    return await registry.pin(layout, backend, name, body.version)
