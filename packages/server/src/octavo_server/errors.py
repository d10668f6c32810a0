"""Errors in OpenAI's schema: ``{"error": {"message", "type", "param", "code"}}``.

Every error response carries the headers its status calls for: ``WWW-Authenticate: Bearer``
on a 401, ``Retry-After`` on a 503, ``Allow`` on a 405.
"""

from __future__ import annotations

from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from octavo.engine.executor import EngineDeadError
from octavo_server.protocol import INVALID_UNICODE, ErrorInfo, ErrorResponse

_TYPES = {401: "authentication_error", 404: "not_found_error",
          503: "service_unavailable_error"}
_NOT_UNICODE = frozenset({INVALID_UNICODE, "string_unicode"})  # ours, and pydantic's own
RETRY_AFTER_SECONDS = 1  # a hint: the queue or the connections are full now, not for long
_STATUS_HEADERS = {401: {"WWW-Authenticate": "Bearer"},
                   503: {"Retry-After": str(RETRY_AFTER_SECONDS)}}


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


def _sendable(text: str | None) -> str | None:
    """``text`` with lone surrogates written as ``\\ud800`` (a response must be UTF-8)."""
    return None if text is None else text.encode("utf-8", "backslashreplace").decode("utf-8")


def error_body(status: int, message: str, param: str | None = None,
               code: str | None = None) -> dict:
    error_type = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    info = ErrorInfo(message=_sendable(message), type=error_type, param=_sendable(param),
                     code=code)
    return ErrorResponse(error=info).model_dump()


def error_response(status: int, message: str, param: str | None = None,
                   code: str | None = None, headers: dict[str, str] | None = None
                   ) -> JSONResponse:
    return JSONResponse(error_body(status, message, param, code), status_code=status,
                        headers={**_STATUS_HEADERS.get(status, {}), **(headers or {})})


def bad_request(exc: ValueError, fields: set[str] | frozenset[str] = frozenset()) -> APIError:
    """A 400 for an engine ``ValueError``; its message starts with the field it names
    (``logit_bias[7] must be ...`` names ``logit_bias``)."""
    message = str(exc)
    first_word = message.split(" ", 1)[0].split("[", 1)[0]
    return APIError(400, message, param=first_word if first_word in fields else None)


def _is_type_tag(part: str) -> bool:
    """Pydantic names the member of a union an error came from (``str``, ``list[int]``)."""
    return "[" in part or "-" in part or part in {"str", "int", "float", "bool", "list", "dict"}


def _location(loc: tuple) -> str:
    """``("body", "messages", 0, "role")`` -> ``messages[0].role``; it stops at a union tag or
    a dict key (``logit_bias``'s keys are the client's, not field names)."""
    if "[key]" in loc:  # pydantic's tag for an error in a dict key, after the key
        loc = loc[:loc.index("[key]") - 1]
    dotted = ""
    for part in loc[1:] if loc[:1] == ("body",) else loc:
        if isinstance(part, int):
            dotted += f"[{part}]"
            continue
        if _is_type_tag(part) or not (part.isascii() and part.isidentifier()):
            break
        dotted += f".{part}" if dotted else part
    return dotted


def _message(error: dict) -> str:
    if error.get("type") == "string_unicode":
        return "holds a lone UTF-16 surrogate; strings must be valid Unicode"
    message = str(error.get("msg", ""))
    return message.removeprefix("Value error, ")


def _validation_response(_: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    if errors and errors[0].get("type") == "json_invalid":
        return error_response(400, f"the request body is not valid JSON: {errors[0].get('msg')}")
    # A string that is not Unicode fails every member of a union: report only that.
    errors = [e for e in errors if e.get("type") in _NOT_UNICODE] or errors
    by_field: dict[str, list[dict]] = {}
    for error in errors:
        by_field.setdefault(_location(tuple(error.get("loc", ()))), []).append(error)
    param = next(iter(by_field), "")
    message = "; ".join(f"{field or 'body'}: {_field_message(field_errors)}"
                        for field, field_errors in list(by_field.items())[:3])
    return error_response(400, message or "invalid request", param=param or None)


def _field_message(errors: list[dict]) -> str:
    """One field's errors; from a union, the members whose type matched say more than the
    ``Input should be a valid list`` of the others."""
    matched = [e for e in errors if not str(e.get("type", "")).endswith("_type")]
    return " or ".join(dict.fromkeys(_message(e) for e in matched or errors))


def install_error_handlers(app: FastAPI) -> None:
    """Every error the app returns, including routing's 404/405, uses OpenAI's schema."""

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.param, exc.code)

    @app.exception_handler(HTTPException)
    async def _http_error(_: Request, exc: HTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
        return error_response(exc.status_code, message, headers=exc.headers)  # 405: Allow

    app.add_exception_handler(RequestValidationError, _validation_response)

    @app.exception_handler(Exception)  # starlette re-raises it after, so uvicorn logs it
    async def _internal_error(_: Request, exc: Exception) -> JSONResponse:
        return error_response(500, f"internal server error: {type(exc).__name__}: {exc}")

    @app.exception_handler(EngineDeadError)  # a worker died: the server is about to exit
    async def _engine_dead(_: Request, exc: EngineDeadError) -> JSONResponse:
        return error_response(503, str(exc), code="engine_dead")

    @app.exception_handler(ClientDisconnected)
    async def _gone(_: Request, __: ClientDisconnected) -> Response:
        return Response(status_code=499)  # nobody reads it; nginx's code for this case
