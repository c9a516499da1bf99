"""Every error the API returns is JSON shaped like OpenAI's: {"error": {message, type, code,
param}}, with the status code that says whose fault it is and whether to retry."""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from gptkit.errors import GptkitError

log = logging.getLogger("gptkit.serve")

TYPES = {400: "invalid_request_error", 401: "authentication_error",
         404: "invalid_request_error", 405: "invalid_request_error",
         413: "invalid_request_error", 422: "invalid_request_error", 429: "rate_limit_error",
         500: "server_error", 503: "server_error"}
CODES = {400: "invalid_json", 401: "invalid_api_key", 404: "not_found",
         405: "method_not_allowed", 413: "too_large", 422: "invalid_value",
         429: "too_many_requests", 500: "internal_error", 503: "unavailable"}


class APIError(Exception):
    """An error to send as it is: `status`, a message for the user, and an OpenAI-style code."""

    def __init__(self, status: int, message: str, *, code: str | None = None,
                 param: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code or CODES.get(status)
        self.param = param
        self.headers = headers


def error_body(status: int, message: str, code: str | None = None,
               param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": TYPES.get(status, "invalid_request_error"),
                      "code": code or CODES.get(status), "param": param}}


def error_response(status: int, message: str, code: str | None = None,
                   param: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, code, param), status_code=status,
                        headers=headers)


def error_bytes(status: int, message: str, code: str | None = None) -> bytes:
    """The body of an error sent before FastAPI is reached (by the ASGI middleware)."""
    return json.dumps(error_body(status, message, code)).encode()


def describe_validation(errors: list[Any]) -> tuple[str, str | None, str]:
    """(message, param, code) for pydantic's errors: the first three, each as `field: why`."""
    parts: list[str] = []
    params: list[str] = []
    code = "invalid_value"
    for error in errors:
        loc = [str(p) for p in error.get("loc", ()) if p != "body"]
        # drop the union branch names pydantic puts into the location ('str', 'list[str]')
        loc = [p for p in loc if not (p in ("str", "int", "float", "bool") or "[" in p)]
        param = ".".join(loc) or None
        if error.get("type") == "extra_forbidden":
            code = "unknown_field"
            text = f"{param}: unknown field (not part of this API)"
        else:
            why = str(error.get("msg", "invalid")).removeprefix("Value error, ")
            text = f"{param}: {why}" if param else f"the body: {why}"
        if text not in parts:
            parts.append(text)
            params.append(param or "")
        if len(parts) == 3:
            break
    return "; ".join(parts), (params[0] or None) if params else None, code


def install_handlers(app: FastAPI) -> None:
    """JSON errors for our own, FastAPI's and Starlette's exceptions, and for crashes."""

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.code, exc.param, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        if any(e.get("type") == "json_invalid" for e in errors):
            detail = next(e for e in errors if e.get("type") == "json_invalid")
            why = (detail.get("ctx") or {}).get("error", "JSON decode error")
            at = detail.get("loc", ("body", "?"))[-1]
            return error_response(400, f"the body is not valid JSON: {why} at character {at}",
                                  "invalid_json")
        message, param, code = describe_validation(errors)
        return error_response(422, message, code, param)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        status = exc.status_code
        message = str(exc.detail)
        if status == 404:
            message = f"no such endpoint: {request.method} {request.url.path}"
        elif status == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        elif status == 400:
            message = f"the body could not be read as JSON ({message.lower()})"
        return error_response(status, message, CODES.get(status),
                              headers=getattr(exc, "headers", None))

    @app.exception_handler(GptkitError)
    async def user_error(request: Request, exc: GptkitError) -> JSONResponse:
        # bad input found below the endpoint (e.g. text no tokenizer encodes): the client's
        # fault, and a handled error keeps the connection open (a crash closes it)
        return error_response(422, " ".join(str(exc).split()))

    @app.exception_handler(Exception)
    async def crash(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(500, f"internal error ({type(exc).__name__}); the server log "
                              "has the details")
