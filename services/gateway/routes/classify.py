"""``POST /v1/classify/{name}``: the gateway's own, friendlier answer (the top
classes with their labels and scores, and whether the image is "not one of the
known classes"), from a JSON body or a multipart upload of image files. The
page, the CLI and the demo use it; TF Serving's clients use ``:predict``."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from incept.serving.outputs import answer_json
from services.gateway import serving
from services.gateway.deps import ModelName, PredictAuthorized
from services.gateway.errors import ApiError
from services.gateway.images import parse_images
from services.gateway.schemas import ErrorBody, PredictResponse

router = APIRouter(prefix="/v1/classify", tags=["classify"], dependencies=PredictAuthorized,
                   responses={401: {"model": ErrorBody}, 503: {"model": ErrorBody}})

_MEDIA = ("application/json", "multipart/form-data")


@router.post(
    "/{name}", response_model=PredictResponse,
    responses={400: {"model": ErrorBody}, 404: {"model": ErrorBody}, 413: {"model": ErrorBody},
               415: {"model": ErrorBody}, 422: {"model": ErrorBody}},
    openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}},
        "multipart/form-data": {"schema": {"type": "object", "properties": {
            "images": {"type": "array", "items": {"type": "string", "format": "binary"}}}}},
    }}},
)
async def classify(name: ModelName, request: Request,
                   version: int | None = Query(None, ge=1, description="Pin a served version.")):
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() not in _MEDIA:
        raise ApiError("send application/json ({\"instances\": [{\"b64\": ...}]}) "
                       "or multipart/form-data with image files", status_code=415)
    settings = request.app.state.settings
    body = await serving.read_body(request, settings.max_body_bytes)
    images = await serving.checked(parse_images(body, content_type, settings.max_images_per_request),
                                   request.app.state)
    result = await serving.predict(request.app.state, name, images, version)
    # Built as PredictResponse documents it and encoded directly: validating our
    # own answer through the response model cost more than the rest of the route.
    return JSONResponse(answer_json(result))
