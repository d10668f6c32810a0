"""Errors in OpenAI's schema: ``{"error": {"message", "type", "param", "code"}}``."""

from __future__ import annotations

from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from octavo_server.protocol import ErrorInfo, ErrorResponse

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
          503: "service_unavailable_error"}


class APIError(Exception):
    """An error the client caused or must retry; answered with ``status`` in OpenAI's schema."""

    def __init__(self, status: int, message: str, *, param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code


class ClientDisconnected(Exception):
    """The client closed the connection before its (non-streamed) answer was ready."""


def error_body(status: int, message: str, param: str | None = None,
               code: str | None = None) -> dict:
    error_type = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    info = ErrorInfo(message=message, type=error_type, param=param, code=code)
    return ErrorResponse(error=info).model_dump()


def error_response(status: int, message: str, param: str | None = None,
                   code: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, param, code), status_code=status)


def bad_request(exc: ValueError, fields: set[str] | frozenset[str] = frozenset()) -> APIError:
    """A 400 for an engine ``ValueError``; its message starts with the field it names."""
    message = str(exc)
    first_word = message.split(" ", 1)[0]
    return APIError(400, message, param=first_word if first_word in fields else None)


def _is_type_tag(part: str) -> bool:
    """Pydantic names the member of a union an error came from (``str``, ``list[int]``)."""
    return "[" in part or "-" in part or part in {"str", "int", "float", "bool", "list", "dict"}


def _location(loc: tuple) -> str:
    """``("body", "messages", 0, "role")`` -> ``messages[0].role``, without union tags."""
    dotted = ""
    for part in loc[1:] if loc[:1] == ("body",) else loc:
        part = str(part)
        if _is_type_tag(part):
            break
        dotted += f"[{part}]" if part.isdigit() else (f".{part}" if dotted else part)
    return dotted


def _validation_response(_: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    if errors and errors[0].get("type") == "json_invalid":
        return error_response(400, f"the request body is not valid JSON: {errors[0].get('msg')}")
    by_field: dict[str, list[str]] = {}
    for error in errors:
        messages = by_field.setdefault(_location(tuple(error.get("loc", ()))), [])
        if error.get("msg") not in messages:
            messages.append(error.get("msg"))
    param = next(iter(by_field), "")
    message = "; ".join(f"{field or 'body'}: {' or '.join(messages)}"
                        for field, messages in list(by_field.items())[:3])
    return error_response(400, message or "invalid request", param=param or None)


def install_error_handlers(app: FastAPI) -> None:
    """Every error the app returns, including routing's 404/405, uses OpenAI's schema."""

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.param, exc.code)

    @app.exception_handler(HTTPException)
    async def _http_error(_: Request, exc: HTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
        return error_response(exc.status_code, message)

    app.add_exception_handler(RequestValidationError, _validation_response)

    @app.exception_handler(Exception)  # starlette re-raises it after, so uvicorn logs it
    async def _internal_error(_: Request, exc: Exception) -> JSONResponse:
        return error_response(500, f"internal server error: {type(exc).__name__}: {exc}")

    @app.exception_handler(ClientDisconnected)
    async def _gone(_: Request, __: ClientDisconnected) -> Response:
        return Response(status_code=499)  # nobody reads it; nginx's code for this case
