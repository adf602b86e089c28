"""A registry server (``loradex serve``) used through its HTTP API, as if it were local.

:class:`RemoteRegistry` offers the methods the CLI and the reference resolver
(:mod:`registry.refs`) call on :class:`registry.service.Registry`, with the same arguments, and
returns the same records (:mod:`registry.records`). Errors come back as the same
:class:`~mergetools.errors.LoradexError` classes: a problem+json body's ``code`` picks the class
(:data:`registry.errors.ERROR_CODES`), its ``detail`` is the message, its other members the
fields. So a command prints the same lines against a server as against the local registry.

What runs where:

- register parses and checks the adapter folder here (the same checks, so the same refusals
  naming the same folder), uploads each file by digest (``HEAD`` then ``PUT`` only for blobs the
  server lacks), then posts the version, which the server checks again and records;
- export and the references of ``merge`` / ``check`` download the files, verify each sha256 and
  write them atomically (exports) or into ``$LORADEX_HOME/cache`` (references, reused);
- base add fingerprints the folder here and sends the fingerprint and signature (and, when
  storing, the files as blobs).

Requests that failed to connect, or that the server answered with 502/503/504, are retried a
few times with backoff; every write is safe to repeat (blobs by digest, register by content,
alias moves to a version, evals and tags by value). Commands that need the registry's own
database or blob store (gc, verify, tokens, metric directions, schema upgrades) raise
:class:`~registry.errors.NotRemoteError`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar
from urllib.parse import quote

import httpx

from mergetools.errors import (
    HINT_ACTIONS,
    ConflictError,
    InvalidInputError,
    LoradexError,
    NotFoundError,
)
from registry.errors import (
    ERROR_CODES,
    AuthenticationError,
    CorruptBlobError,
    NotRemoteError,
    PermissionDeniedError,
    ServerUnavailableError,
)
from registry.records import (
    AdapterRow,
    AliasMoveRow,
    BaseRow,
    CheckpointRow,
    EvalRow,
    EventRow,
    FileRow,
    LineageEdgeRow,
    LineageView,
    MetricRow,
    Page,
    RegisterResult,
    VersionDetail,
    VersionKey,
    VersionRow,
    _jsonable,
)
from registry.tokens import CreatedToken, TokenRow

if TYPE_CHECKING:
    from registry.blobstore import Progress
    from registry.inputs import EvalInput, ParentInput
    from registry.search import SearchQuery
    from registry.settings import Settings

logger = logging.getLogger(__name__)

API_PREFIX = "/api/v1"
ATTEMPTS = 4
"""Tries of one request (the first and three retries)."""
BACKOFF_S = 0.25
"""The first retry's wait; doubled for each further one."""
RETRY_STATUSES = {502, 503, 504}
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 60.0
"""How long a request waits for the server's next bytes (a register: :data:`REGISTER_TIMEOUT_S`)."""
REGISTER_TIMEOUT_S = 600.0
"""A register waits longer: the server copies and checks the adapter's files before answering."""
CHUNK = 1 << 20

_PROBLEM_RESERVED = {"type", "title", "status", "detail", "code", "instance", "hint", "hint_action"}
_STATUS_CLASSES: dict[int, type[LoradexError]] = {
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    422: InvalidInputError,
}

R = TypeVar("R")
_UNSET: Any = object()


# ------------------------------------------------------------------------------ records from JSON


def _parse_time(value: Any) -> Any:
    if isinstance(value, str):
        parsed = dt.datetime.fromisoformat(value)
        return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=dt.UTC)
    return value


def _record(cls: type[R], data: Mapping[str, Any], **nested: Any) -> R:
    """``cls`` (a records dataclass) from its ``to_dict()`` JSON; ``nested`` gives fields built
    by the caller (lists of records)."""
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name in nested:
            values[f.name] = nested[f.name]
        elif f.name in data:
            value = data[f.name]
            values[f.name] = _parse_time(value) if "datetime" in str(f.type) else value
    return cls(**values)


def _eval_row(data: Mapping[str, Any]) -> EvalRow:
    return _record(EvalRow, data)


def _version_detail(data: Mapping[str, Any]) -> VersionDetail:
    return _record(
        VersionDetail,
        data,
        files=[_record(FileRow, f) for f in data.get("files", [])],
        evals=[_eval_row(e) for e in data.get("evals", [])],
    )


def _register_result(data: Mapping[str, Any]) -> RegisterResult:
    return _record(
        RegisterResult, data, attached_evals=[_eval_row(e) for e in data.get("attached_evals", [])]
    )


def _lineage_view(data: Mapping[str, Any]) -> LineageView:
    return _record(
        LineageView,
        data,
        parents=[_record(LineageEdgeRow, e) for e in data.get("parents", [])],
        children=[_record(LineageEdgeRow, e) for e in data.get("children", [])],
    )


# ------------------------------------------------------------------------------ errors from problem+json


def error_from_problem(status: int, body: Any, *, server: str) -> LoradexError:
    """The :class:`LoradexError` a problem+json response stands for (same class, message,
    fields and hint as the server's), or a generic one for a body that is not a problem."""
    if not isinstance(body, dict) or not isinstance(body.get("detail"), str):
        if status >= 500:
            return ServerUnavailableError(
                f"the registry server {server} failed with HTTP {status} and no error details; "
                "its log says why"
            )
        return _bare(
            _STATUS_CLASSES.get(status, LoradexError),
            f"the registry server {server} answered HTTP {status} without error details; is it "
            "a loradex server (LORADEX_SERVER)?",
        )
    code = str(body.get("code") or "")
    cls = ERROR_CODES.get(code) or _STATUS_CLASSES.get(status)
    if cls is None:
        cls = ServerUnavailableError if status >= 500 else LoradexError
    fields = {k: v for k, v in body.items() if k not in _PROBLEM_RESERVED}
    hint = body.get("hint") if isinstance(body.get("hint"), str) else None
    action = body.get("hint_action")
    exc = _bare(
        cls,
        body["detail"],
        fields=fields,
        hint=hint,
        hint_action=action if isinstance(action, str) and action in HINT_ACTIONS else None,
    )
    if code and code != cls.code:
        exc.code = code  # type: ignore[misc]  # an HTTP-layer code (bad_range, invalid_request)
    for key, value in fields.items():
        if key.isidentifier() and not hasattr(exc, key):
            setattr(exc, key, value)  # AliasMovedError.current_version and the like
    return exc


def _bare(cls: type[LoradexError], message: str, **kwargs: Any) -> LoradexError:
    """An instance of ``cls`` with the root's constructor (subclasses take other arguments)."""
    exc = cls.__new__(cls)
    LoradexError.__init__(exc, message, **kwargs)
    return exc


# ------------------------------------------------------------------------------ the client


class RemoteRegistry:
    """The registry at ``settings.server``, through its HTTP API (see the module docstring).

    ``settings`` are this machine's (the cache under ``LORADEX_HOME``, the token); ``transport``
    replaces the network (tests pass an ``httpx.ASGITransport`` or ``MockTransport``).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        transport: httpx.BaseTransport | None = None,
        attempts: int = ATTEMPTS,
        backoff_s: float = BACKOFF_S,
        sleep: Callable[[float], None] = time.sleep,
        read_timeout_s: float = READ_TIMEOUT_S,
    ) -> None:
        if not settings.server:
            raise InvalidInputError("no registry server URL is set (LORADEX_SERVER)")
        self.settings = settings
        self.server = settings.server
        self.attempts = max(1, attempts)
        self.backoff_s = backoff_s
        self.read_timeout_s = read_timeout_s
        self._sleep = sleep
        headers = {"User-Agent": "loradex-cli"}
        if settings.token:
            headers["Authorization"] = f"Bearer {settings.token}"
        self._http = httpx.Client(
            base_url=self.server + API_PREFIX,
            headers=headers,
            timeout=httpx.Timeout(read_timeout_s, connect=CONNECT_TIMEOUT_S),
            transport=transport,
            follow_redirects=False,
        )
        self._base_names: dict[int, str] = {}

    # -------------------------------------------------------------------- plumbing

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RemoteRegistry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getattr__(self, name: str) -> Callable[..., NoReturn]:
        """Any other use case of the local registry: refused with one clear error."""
        if name.startswith("_"):
            raise AttributeError(name)

        def refuse(*args: object, **kwargs: object) -> NoReturn:
            raise NotRemoteError(
                f"this works only on the registry of this machine (its database and blob store), "
                f"not through the registry server {self.server} ({name}); unset LORADEX_SERVER "
                "to use the local registry, or run it where the server's registry is"
            )

        return refuse

    def _token_owner_acts(self, actor: str | None) -> None:
        """The server records the token's owner as the actor of every change; a use case
        called here cannot name another one."""
        if actor is not None:
            raise InvalidInputError(
                f"a change through the registry server {self.server} is made by the owner of "
                f"LORADEX_TOKEN; it cannot be recorded as {actor[:80]!r}",
                fields={"server": self.server},
            )

    def _unreachable(self, exc: Exception, method: str, path: str) -> ServerUnavailableError:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        return ServerUnavailableError(
            f"the registry server {self.server} could not be reached ({reason[:200]}) after "
            f"{self.attempts} attempt(s) of {method} {API_PREFIX}{path[:200]}; is the registry "
            "server running there, and is LORADEX_SERVER right?",
            fields={"server": self.server},
        )

    def _send(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | Sequence[tuple[str, Any]] | None = None,
        json: Any = None,
        content: Callable[[], Iterator[bytes]] | None = None,
        headers: Mapping[str, str] | None = None,
        stream: bool = False,
        ok: Sequence[int] = (200, 201),
        read_timeout_s: float | None = None,
    ) -> httpx.Response:
        """One request, retried on connection errors and 502/503/504; an error response raised
        as its :class:`LoradexError`. ``content`` makes the body anew for each attempt. A server
        that accepted the request but says nothing for ``read_timeout_s`` is not asked again
        (it may be busy with it): that is one error at once."""
        last: Exception | None = None
        read_timeout_s = read_timeout_s or self.read_timeout_s
        for attempt in range(self.attempts):
            if attempt:
                self._sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                request = self._http.build_request(
                    method,
                    path,
                    params=params,  # type: ignore[arg-type]
                    json=json,
                    content=content() if content is not None else None,
                    headers=headers,
                    timeout=httpx.Timeout(read_timeout_s, connect=CONNECT_TIMEOUT_S),
                )
                response = self._http.send(request, stream=stream)
            except httpx.ReadTimeout:
                raise ServerUnavailableError(
                    f"the registry server {self.server} did not answer {method} "
                    f"{API_PREFIX}{path[:200]} within {read_timeout_s:g} s; it may be overloaded "
                    "— try again later",
                    fields={"server": self.server},
                ) from None
            except httpx.TransportError as exc:
                logger.info("%s %s: attempt %d failed: %s", method, path, attempt + 1, exc)
                last = exc
                continue
            except httpx.InvalidURL as exc:
                raise InvalidInputError(
                    f"the request {method} {path[:200]} cannot be sent to {self.server}: {exc}"
                ) from None
            if response.status_code in ok:
                return response
            if stream:
                response.read()
                response.close()
            body = _json_or_none(response)
            if response.status_code in RETRY_STATUSES and _transient(body):
                logger.info("%s %s: attempt %d got HTTP %d", method, path, attempt + 1, response.status_code)
                last = error_from_problem(response.status_code, body, server=self.server)
                continue
            if 300 <= response.status_code < 400:
                where = response.headers.get("location", "elsewhere")
                raise InvalidInputError(
                    f"the registry server {self.server} redirects {method} {API_PREFIX}"
                    f"{path[:200]} to {where[:300]} (HTTP {response.status_code}); requests are "
                    "not followed (they carry the token): set LORADEX_SERVER to the server's "
                    "own URL",
                    fields={"server": self.server, "location": where[:300]},
                )
            if method == "HEAD":  # no body to say why: the caller asks again another way
                raise _HeadRefused(response.status_code)
            raise error_from_problem(response.status_code, body, server=self.server)
        if isinstance(last, LoradexError):
            raise last
        assert last is not None
        raise self._unreachable(last, method, path)

    def _get(self, path: str, **params: Any) -> Any:
        query = [(k, v) for k, v in params.items() if v is not None]
        return self._send("GET", path, params=_flatten(query)).json()

    # -------------------------------------------------------------------- references

    def _version_path(self, ref: str) -> tuple[str, str]:
        """``(name, selector)`` of the route for ``ref`` (a ``sha256:`` ref is resolved first)."""
        from registry.inputs import parse_ref

        parsed = parse_ref(ref)
        if parsed.name is None:
            key = self.resolve(ref)
            return key.name, str(key.version)
        if parsed.version is not None:
            return parsed.name, str(parsed.version)
        return parsed.name, parsed.alias or "latest"

    def _version_url(self, ref: str, tail: str = "") -> str:
        name, selector = self._version_path(ref)
        return f"/adapters/{_q(name)}/versions/{_q(selector)}{tail}"

    def _adapter_part(self, name: str) -> str:
        """``name`` quoted for a route; a name no adapter can have (too long for a URL, say)
        is "not registered" here, as the local registry says."""
        from registry.inputs import NAME_RE, shown

        if not NAME_RE.match(name) and len(name) > 200:
            raise NotFoundError(
                f"adapter {shown(name)} is not registered",
                fields={"name": name},
                hint="list the registered names, or register the adapter under that name first",
                hint_action="register",
            )
        return _q(name)

    def _base_part(self, ref: str) -> str:
        from registry.inputs import NAME_RE, shown

        if not ref.startswith("sha256:") and not NAME_RE.match(ref) and len(ref) > 200:
            raise NotFoundError(
                f"base model {shown(ref)} is not registered",
                fields={"base": ref},
                hint="list the registered bases, or add this one from its folder",
                hint_action="base_add",
            )
        return _q(ref)

    def resolve(self, ref: str) -> VersionKey:
        from registry.inputs import parse_ref

        parse_ref(ref)  # malformed references fail here, with the local message
        data = self._get(f"/refs/{_q(ref)}")
        return _record(VersionKey, data)

    def get_adapter(self, name: str) -> AdapterRow:
        return _record(AdapterRow, self._get(f"/adapters/{self._adapter_part(name)}"))

    # -------------------------------------------------------------------- reads

    def list_adapters(
        self, *, pattern: str | None = None, limit: int = 50, after: str | None = None
    ) -> Page:
        from registry.search import check_limit

        check_limit(limit)
        data = self._get("/adapters", pattern=pattern or None, limit=limit, after=after)
        return Page(
            items=[_record(AdapterRow, a) for a in data["items"]], next_cursor=data["next_cursor"]
        )

    def search(self, query: SearchQuery) -> Page:
        from registry.search import check_limit

        check_limit(query.limit)
        params: list[tuple[str, Any]] = [
            ("filter", f"{m.metric}{m.op}{m.value!r}") for m in query.metrics
        ]
        params += [("tag", f"{k}={v}") for k, v in query.tags.items()]
        for key, value in (
            ("name", query.name),
            ("base", query.base),
            ("module", query.target_module),
            ("max_rank", query.max_rank),
            ("dataset", query.dataset),
            ("split", query.split),
            ("sort", query.sort),
            ("after", query.after),
        ):
            if value is not None:
                params.append((key, value))
        params += [("all", "true" if query.include_yanked else "false"), ("limit", query.limit)]
        data = self._send("GET", "/search", params=params).json()
        return Page(
            items=[_record(VersionRow, v) for v in data["items"]], next_cursor=data["next_cursor"]
        )

    def show(self, ref: str) -> VersionDetail:
        data = self._get(self._version_url(ref))
        data.pop("lineage", None)
        return _version_detail(data)

    def versions(self, name: str) -> list[VersionRow]:
        return [
            _record(VersionRow, v) for v in self._get(f"/adapters/{self._adapter_part(name)}/versions")
        ]

    def list_evals(self, ref: str) -> list[EvalRow]:
        return [_eval_row(e) for e in self._get(self._version_url(ref, "/evals"))]

    def events(
        self,
        *,
        name: str | None = None,
        limit: int = 100,
        before: int | None = None,
        after: int | None = None,
    ) -> list[EventRow]:
        from registry.search import check_limit

        check_limit(limit)
        if name is not None:
            self._adapter_part(name)
        rows = self._get("/events", name=name, limit=limit, before=before, after=after)
        return [_record(EventRow, e) for e in rows]

    def alias_history(self, name: str, alias: str | None = None) -> list[AliasMoveRow]:
        part = self._adapter_part(name)
        path = (
            f"/adapters/{part}/alias-history"
            if alias is None
            else f"/adapters/{part}/aliases/{_q(alias)}/history"
        )
        return [_record(AliasMoveRow, m) for m in self._get(path)]

    def lineage(self, ref: str) -> LineageView:
        return _lineage_view(self._get(self._version_url(ref, "/lineage")))

    def list_checkpoints(
        self, *, ref: str | None = None, limit: int = 50, after: int | None = None
    ) -> Page:
        from registry.search import check_limit

        check_limit(limit)
        data = self._get("/checkpoints", ref=ref, limit=limit, after=after)
        return Page(
            items=[_record(CheckpointRow, c) for c in data["items"]],
            next_cursor=data["next_cursor"],
        )

    def list_bases(self) -> list[BaseRow]:
        rows = [_record(BaseRow, b) for b in self._get("/bases")]
        self._base_names.update({b.id: b.name for b in rows})
        return rows

    def get_base(self, ref: str, *, with_signature: bool = True) -> BaseRow:
        row = _record(BaseRow, self._get(f"/bases/{self._base_part(ref)}"))
        self._base_names[row.id] = row.name
        return row if with_signature else dataclasses.replace(row, signature=None)

    # -------------------------------------------------------------------- writes

    def add_evals(
        self, ref: str, evals: Sequence[EvalInput], *, actor: str | None = None
    ) -> list[EvalRow]:
        self._token_owner_acts(actor)
        if not evals:
            raise InvalidInputError(
                "no eval score given; expected METRIC=VALUE[,dataset=D][,split=S]"
            )
        body = {"evals": [_eval_json(e) for e in evals]}
        rows = self._send("POST", self._version_url(ref, "/evals"), json=body).json()
        return [_eval_row(e) for e in rows]

    def set_tags(
        self,
        ref: str,
        *,
        set_tags: Mapping[str, str] | None = None,
        remove: Sequence[str] = (),
        actor: str | None = None,
    ) -> dict[str, str]:
        self._token_owner_acts(actor)
        body = {"set": dict(set_tags or {}), "remove": list(remove)}
        tags: dict[str, str] = self._send("PATCH", self._version_url(ref, "/tags"), json=body).json()
        return tags

    def set_alias(
        self,
        ref: str,
        alias: str,
        *,
        expected_version: int | None | object = _UNSET,
        actor: str | None = None,
    ) -> AliasMoveRow:
        """Point ``alias`` at ``ref``; ``expected_version`` (a number, or None: unset) makes it a
        compare-and-swap, as :meth:`registry.service.Registry.set_alias`."""
        self._token_owner_acts(actor)
        from registry.inputs import check_alias

        check_alias(alias)
        key = self.resolve(ref)
        body: dict[str, Any] = {"version": key.version}
        if expected_version is not _UNSET and type(expected_version).__name__ != "Unconditional":
            body["expected_version"] = expected_version
        data = self._send(
            "PUT", f"/adapters/{_q(key.name)}/aliases/{_q(alias)}", json=body
        ).json()
        return _record(AliasMoveRow, data)

    def remove_alias(self, name: str, alias: str, *, actor: str | None = None) -> AliasMoveRow:
        self._token_owner_acts(actor)
        data = self._send("DELETE", f"/adapters/{self._adapter_part(name)}/aliases/{_q(alias)}").json()
        return _record(AliasMoveRow, data)

    # -------------------------------------------------------------------- publishing

    def publish_report(
        self,
        ref: str | None,
        *,
        alias: str,
        rollback_of: str | None = None,
        require: Sequence[str] = (),
        no_regress: Sequence[str] = (),
        serving: Sequence[str] = (),
        base: str | None = None,
        base_signature: Path | None = None,
        dry_run: bool = False,
        actor: str | None = None,
    ) -> dict[str, Any]:
        """The report of a publish (``ref``) or a rollback (``rollback_of``) by the server's
        ``POST .../publish``, as :meth:`registry.publish.PublishReport.to_dict` gives it —
        passed or not (a refused publish is the report of its ``publish_refused`` answer)."""
        self._token_owner_acts(actor)
        from registry.errors import PublishRefusedError

        body: dict[str, Any] = {
            "alias": alias,
            "require": list(require),
            "no_regress": list(no_regress),
            "serving": list(serving),
            "base": base,
            "dry_run": dry_run,
        }
        if base_signature is not None:
            import json

            try:
                body["base_signature"] = json.loads(base_signature.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, ValueError) as exc:
                raise InvalidInputError(f"{base_signature}: not a readable signature file ({exc})") from None
        if rollback_of is not None:
            name = rollback_of
            body["rollback"] = True
        else:
            assert ref is not None
            name, selector = self._version_path(ref)
            body["version"] = int(selector) if selector.isdigit() else selector
        try:
            report: dict[str, Any] = self._send(
                "POST", f"/adapters/{self._adapter_part(name)}/publish", json=body, ok=(200,)
            ).json()
        except PublishRefusedError as exc:
            refused = exc.fields.get("report")
            if not isinstance(refused, dict):
                raise
            return refused
        return report

    def list_aliases(self, name: str | None = None) -> list[Any]:
        from registry.policies import AliasRow

        path = "/aliases" if name is None else f"/adapters/{self._adapter_part(name)}/aliases"
        rows = self._get(path)
        return [_record(AliasRow, row) for row in rows]

    def _policy_url(self, name: str, alias: str, tail: str = "/policy") -> str:
        from registry.inputs import check_alias

        check_alias(alias)
        return f"/adapters/{self._adapter_part(name)}/aliases/{_q(alias)}{tail}"

    def set_alias_policy(
        self,
        name: str,
        alias: str,
        *,
        require: Sequence[str] = (),
        no_regress: Sequence[str] = (),
        serving: Sequence[str] = (),
        actor: str | None = None,
    ) -> Any:
        from registry.policies import PolicyRow

        self._token_owner_acts(actor)

        body = {"require": list(require), "no_regress": list(no_regress), "serving": list(serving)}
        return _record(PolicyRow, self._send("PUT", self._policy_url(name, alias), json=body).json())

    def alias_policy(self, name: str, alias: str) -> Any:
        from registry.policies import PolicyRow

        return _record(PolicyRow, self._get(self._policy_url(name, alias)))

    def remove_alias_policy(self, name: str, alias: str, *, actor: str | None = None) -> Any:
        from registry.policies import PolicyRow

        self._token_owner_acts(actor)

        return _record(PolicyRow, self._send("DELETE", self._policy_url(name, alias)).json())

    def protect_alias(
        self, name: str, alias: str, *, protect: bool = True, actor: str | None = None
    ) -> Any:
        from registry.policies import ProtectionRow

        self._token_owner_acts(actor)

        method = "PUT" if protect else "DELETE"
        data = self._send(method, self._policy_url(name, alias, "/protect")).json()
        return _record(ProtectionRow, {**data, "at": _parse_time(data.get("at"))})

    # -------------------------------------------------------------------- tokens, metrics

    def create_token(
        self,
        *,
        scope: str,
        name: str | None = None,
        prefix: str | None = None,
        expires_in: dt.timedelta | None = None,
        actor: str | None = None,
    ) -> CreatedToken:
        self._token_owner_acts(actor)
        body: dict[str, Any] = {"scope": scope, "name": name, "prefix": prefix}
        if expires_in is not None:  # the API takes a duration as the CLI does: whole minutes
            body["expires"] = f"{max(1, round(expires_in.total_seconds() / 60))}m"
        data = self._send("POST", "/tokens", json=body).json()
        return CreatedToken(token=_record(TokenRow, data["token"]), secret=data["secret"])

    def list_tokens(self) -> list[TokenRow]:
        return [_record(TokenRow, t) for t in self._get("/tokens")]

    def revoke_token(self, token_id: int, *, actor: str | None = None) -> TokenRow:
        self._token_owner_acts(actor)
        return _record(TokenRow, self._send("DELETE", f"/tokens/{int(token_id)}").json())

    def set_metric_direction(
        self, metric: str, direction: str, *, actor: str | None = None
    ) -> MetricRow:
        self._token_owner_acts(actor)
        data = self._send(
            "PUT", f"/metrics/{_q(metric)}", json={"direction": direction}
        ).json()
        return _record(MetricRow, data)

    def list_metrics(self) -> list[MetricRow]:
        return [_record(MetricRow, m) for m in self._get("/metrics")]

    # -------------------------------------------------------------------- status

    def yank(self, ref: str, *, reason: str, actor: str | None = None) -> VersionKey:
        self._token_owner_acts(actor)
        data = self._send("POST", self._version_url(ref, "/yank"), json={"reason": reason}).json()
        return _record(VersionKey, data)

    def unyank(self, ref: str, *, actor: str | None = None) -> VersionKey:
        self._token_owner_acts(actor)
        return _record(VersionKey, self._send("POST", self._version_url(ref, "/unyank")).json())

    def delete(self, ref: str, *, purge: bool, actor: str | None = None) -> VersionKey:
        self._token_owner_acts(actor)
        data = self._send(
            "DELETE", self._version_url(ref), params={"purge": "true" if purge else "false"}
        ).json()
        return _record(VersionKey, data)

    def record_checkpoint(
        self,
        location: Path | str,
        *,
        members: Sequence[tuple[VersionKey, float]],
        base_id: int | None = None,
        base_fingerprint: str | None = None,
        fingerprint: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        actor: str | None = None,
    ) -> CheckpointRow:
        self._token_owner_acts(actor)
        base = None
        if base_id is not None:
            base = self._base_names.get(base_id)
            if base is None:
                base = next((b.name for b in self.list_bases() if b.id == base_id), None)
            if base is None:
                raise NotFoundError(f"base model id {base_id} is not in this registry")
        text = str(location)
        if not text.startswith(("s3://", "hf://")):
            text = str(Path(location).resolve())
        body = {
            "location": text,
            "members": [{"ref": key.ref, "weight": float(w)} for key, w in members],
            "base": base,
            "base_fingerprint": base_fingerprint,
            "fingerprint": fingerprint,
            "metadata": _jsonable(dict(metadata or {})),
        }
        return _record(CheckpointRow, self._send("POST", "/checkpoints", json=body).json())

    # -------------------------------------------------------------------- uploads

    def _upload(self, path: Path, *, progress: Progress | None, done: int, total: int) -> str:
        """Put the file's bytes on the server unless it has them; returns their sha256."""
        sha256 = _sha256_of(path)
        try:
            self._send("HEAD", f"/blobs/{sha256}")
            logger.info("blob %s of %s is on the server already", sha256[:12], path)
        except _HeadRefused:  # not stored (404), or refused: the PUT's answer says why
            size = path.stat().st_size

            def body() -> Iterator[bytes]:
                sent = 0
                with open(path, "rb") as stream:
                    while chunk := stream.read(CHUNK):
                        sent += len(chunk)
                        if progress is not None:
                            progress(done + sent, max(total, done + sent))
                        yield chunk

            self._send(
                "PUT",
                f"/blobs/{sha256}",
                content=body,
                headers={"Content-Length": str(size), "Content-Type": "application/octet-stream"},
            )
        return sha256

    def register(
        self,
        path: Path,
        *,
        name: str,
        base: str | None = None,
        evals: Sequence[EvalInput] = (),
        tags: Mapping[str, str] | None = None,
        description: str = "",
        source: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        parents: Sequence[ParentInput] = (),
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
        progress: Progress | None = None,
        actor: str | None = None,
    ) -> RegisterResult:
        """:meth:`registry.service.Registry.register` through the server: the folder is parsed
        and checked here, its files uploaded by digest, then the version posted."""
        self._token_owner_acts(actor)
        from mergetools.inspect import summarize_adapter
        from registry.bases import check_adapter_for_register
        from registry.folders import CONFIG_FILE, WEIGHT_FILES, _collect_files, select_files
        from registry.inputs import DESCRIPTION_MAX, SOURCE_MAX, check_name, check_text

        check_name(name)
        check_text(description, what="description", limit=DESCRIPTION_MAX, empty_ok=True, multiline=True)
        if source is not None:
            check_text(source, what="source", limit=SOURCE_MAX)
        path = Path(path)
        if not path.is_dir():
            raise InvalidInputError(
                f"adapter path {str(path)!r} is not a folder; expected a PEFT adapter folder "
                f"with {CONFIG_FILE} and {WEIGHT_FILES[0]}"
            )
        summarize_adapter(path)
        base_folder = self._local_base_folder(base) if base is not None else None
        findings: list[dict[str, Any]] | None = None
        if base_folder is not None:
            # A folder of this machine: fingerprinted and checked here, as a local register
            # does; the server names the same base by its fingerprint.
            from mergetools.fingerprint import fingerprint_checkpoint

            fingerprint = fingerprint_checkpoint(
                base_folder, cache_dir=self.settings.cache_dir, progress=progress
            )
            findings = check_adapter_for_register(path, base_folder, cache_dir=self.settings.cache_dir)
            try:
                self.get_base(f"sha256:{fingerprint}", with_signature=False)
            except NotFoundError:
                raise InvalidInputError(
                    f"base folder {str(base_folder)!r} (fingerprint {fingerprint[:12]}...) is not "
                    f"registered on the registry server {self.server}, which cannot read this "
                    "machine's folders; register it there first",
                    fields={"base": str(base_folder), "fingerprint": fingerprint},
                    hint="store the base from this machine, then register again",
                    hint_action="store_base",
                ) from None
            base = f"sha256:{fingerprint}"
        elif base is None:
            findings = check_adapter_for_register(path, None, cache_dir=self.settings.cache_dir)
        files, warnings = select_files(_collect_files(path), include=include, exclude=exclude)
        names = {rel for rel, _ in files}
        if CONFIG_FILE not in names or not names.intersection(WEIGHT_FILES):
            raise InvalidInputError(
                f"adapter folder {str(path)!r} lacks {CONFIG_FILE} or {WEIGHT_FILES[0]}"
            )
        total = sum(file.stat().st_size for _, file in files)
        done = 0
        uploaded: dict[str, str] = {}
        for rel, file in files:
            uploaded[rel] = self._upload(file, progress=progress, done=done, total=total)
            done += file.stat().st_size
            if progress is not None:
                progress(done, max(total, done))
        body = {
            "files": uploaded,
            "base": base,
            "evals": [_eval_json(e) for e in evals],
            "tags": dict(tags or {}),
            "description": description,
            "source": source if source is not None else str(path.resolve()),
            "parents": [_jsonable(dataclasses.asdict(p)) for p in parents],
            "metadata": _jsonable(dict(metadata or {})),
        }
        try:
            data = self._send(
                "POST", f"/adapters/{_q(name)}/versions", json=body, read_timeout_s=REGISTER_TIMEOUT_S
            ).json()
        except LoradexError as exc:
            # The server checked a copy in its upload folder: name this folder instead.
            exc.message = _UPLOAD_FOLDER.sub(lambda _: str(path), exc.message)
            exc.args = (exc.message,)
            raise
        result = _register_result(data)
        return dataclasses.replace(
            result,
            warnings=list(warnings),
            findings=findings if findings is not None else _named(result.findings, str(path)),
        )

    def _local_base_folder(self, base: str) -> Path | None:
        """The folder of this machine ``base`` names (the rule of :mod:`registry.refs`: a path
        argument, or a bare name of a folder that is not a registered base), else None."""
        from registry.refs import _folder, _is_dir, is_path_argument

        if base.startswith("hf://"):
            return None
        if is_path_argument(base):
            return _folder(base, what="base")
        if _is_dir(Path(base)):
            try:
                self.get_base(base, with_signature=False)
            except (NotFoundError, InvalidInputError):
                return Path(base)
        return None

    def add_base(
        self,
        path: Path,
        *,
        name: str | None = None,
        description: str = "",
        repo: str | None = None,
        revision: str | None = None,
        store: bool = False,
        progress: Progress | None = None,
        actor: str | None = None,
    ) -> BaseRow:
        """:meth:`registry.service.Registry.add_base` through the server: fingerprint and
        signature computed here, the files (``store``) uploaded by digest."""
        self._token_owner_acts(actor)
        from mergetools.errors import InvalidCheckpointError
        from mergetools.fingerprint import fingerprint_checkpoint
        from mergetools.folder import Folder
        from mergetools.signature import read_signature
        from registry.bases import _base_name_for

        path = Path(path)
        if not path.is_dir():
            raise InvalidInputError(
                f"base path {str(path)!r} is not a folder; expected a Hugging Face checkpoint folder"
            )
        fingerprint = fingerprint_checkpoint(path, cache_dir=self.settings.cache_dir, progress=progress)
        signature = read_signature(path)
        files: dict[str, str] | None = None
        if store:
            walked = Folder.open(path, error=InvalidCheckpointError).walk()
            if not walked:
                raise InvalidCheckpointError(f"base folder {str(path)!r} has no files to store")
            total = sum(file.stat().st_size for _, file in walked)
            done = 0
            files = {}
            for rel, file in walked:
                files[rel] = self._upload(file, progress=progress, done=done, total=total)
                done += file.stat().st_size
        body = {
            "name": name or _base_name_for(path),
            "name_given": bool(name),
            "fingerprint": fingerprint,
            "signature": _jsonable(signature),
            "source_path": str(path.resolve()),
            "repo": repo,
            "revision": revision,
            "description": description,
            "files": files,
        }
        row = _record(BaseRow, self._send("POST", "/bases", json=body).json())
        self._base_names[row.id] = row.name
        return row

    # -------------------------------------------------------------------- downloads

    def _download(self, url: str, dest: Path, *, sha256: str, size: int, what: str) -> None:
        """Write the file at ``url`` to ``dest`` (temp then rename), verified; retried whole
        when the transfer breaks or the bytes do not match."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        for attempt in range(self.attempts):
            if attempt:
                self._sleep(self.backoff_s * 2 ** (attempt - 1))
            fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
            tmp = Path(tmp_name)
            try:
                digest = hashlib.sha256()
                written = 0
                with os.fdopen(fd, "wb") as out:
                    response = self._send("GET", url, stream=True)
                    try:
                        for chunk in response.iter_bytes(CHUNK):
                            digest.update(chunk)
                            written += len(chunk)
                            out.write(chunk)
                    finally:
                        response.close()
                    out.flush()
                    os.fsync(out.fileno())
                if written == size and digest.hexdigest() == sha256:
                    os.replace(tmp, dest)
                    return
                logger.warning(
                    "%s: got %d bytes with sha256 %s, expected %d bytes with %s (attempt %d)",
                    what, written, digest.hexdigest()[:12], size, sha256[:12], attempt + 1,
                )
            except httpx.TransportError as exc:
                logger.info("%s: download attempt %d broke: %s", what, attempt + 1, exc)
                if attempt == self.attempts - 1:
                    raise self._unreachable(exc, "GET", url) from None
            finally:
                tmp.unlink(missing_ok=True)
        raise CorruptBlobError(
            f"{what} downloaded from {self.server} does not match its sha256 {sha256} "
            f"({size} bytes) after {self.attempts} attempt(s); nothing was written",
            fields={"sha256": sha256, "server": self.server},
        )

    def export(
        self, ref: str, out: Path, *, force: bool = False, progress: Progress | None = None
    ) -> Path:
        """:meth:`registry.service.Registry.export` from the server: every file downloaded,
        verified, and the folder moved into place only when all are."""
        from mergetools.outdir import ProtectedPath, atomic_output_folder

        shown = out
        out = Path(out).absolute()
        detail = self.show(ref)
        if detail.status == "deleted":
            self.resolve(ref)  # the local registry's own "not found" for a deleted version
        name, selector = detail.name, str(detail.version)
        output = atomic_output_folder(
            out,
            kind="export",
            force=force,
            protected=[
                ProtectedPath(self.settings.home, "LORADEX_HOME"),
                ProtectedPath(Path.cwd(), "the current folder", inside_ok=True),
            ],
            fsync=True,
            empty_ok=True,
            label=f"export target {str(shown)!r}",
        )
        total = sum(f.size for f in detail.files)
        done = 0
        with output as tmp:
            for f in sorted(detail.files, key=lambda f: f.path):
                self._download(
                    f"/adapters/{_q(name)}/versions/{selector}/files/{_q(f.path, safe='/')}",
                    tmp / f.path,
                    sha256=f.sha256,
                    size=f.size,
                    what=f"file {f.path} of {detail.ref}",
                )
                done += f.size
                if progress is not None:
                    progress(done, max(total, done))
        logger.info("exported %s from %s to %s", detail.ref, self.server, out)
        return out

    def materialize(self, key: VersionKey) -> Path:
        """A folder with the version's verified files under ``$LORADEX_HOME/cache/versions``,
        downloaded once and reused (re-verified), as the local registry builds it."""
        from registry.folders import _folder_matches, build_cache_folder, files_digest

        detail = self.show(key.ref)
        files = {f.path: (f.sha256, f.size) for f in detail.files}
        if not files:
            raise NotFoundError(f"{key.ref} has no stored files (deleted and purged?)")
        digest = files_digest({p: s for p, (s, _) in files.items()})
        root = self.settings.cache_dir / "versions"
        target = root / digest
        tampered = target.is_dir() and not _folder_matches(target, files)
        if target.is_dir() and not tampered:
            return target
        downloads = _Downloads(
            self,
            {
                sha: f"/adapters/{_q(key.name)}/versions/{key.version}/files/{_q(rel, safe='/')}"
                for rel, (sha, _) in files.items()
            },
            label=key.ref,
        )
        build_cache_folder(downloads, root, target, files, replace=tampered)  # type: ignore[arg-type]
        return target

    def materialize_base(self, ref: str, *, progress: Progress | None = None) -> Path:
        """The stored files of base ``ref``, downloaded once into ``$LORADEX_HOME/cache/bases``
        (reuse checks the manifest written beside it, as :meth:`registry.bases.BasesMixin.
        materialize_base` does)."""
        from registry.bases import _manifest_matches, _write_manifest
        from registry.folders import _folder_matches, build_cache_folder

        base = self.get_base(ref, with_signature=False)
        rows = [_record(FileRow, f) for f in self._get(f"/bases/{_q(base.name)}/files")]
        if not rows:
            raise NotFoundError(
                f"base model {base.name!r} is registered but its files are not stored on the "
                f"registry server {self.server}",
                fields={"base": base.name, "fingerprint": base.fingerprint},
                hint="store the base from a machine that has its folder",
                hint_action="store_base",
            )
        files = {r.path: (r.sha256, r.size) for r in rows}
        root = self.settings.cache_dir / "bases"
        key = base.fingerprint or f"id-{base.id}"
        target = root / key
        manifest = root / f"{key}.files.json"  # as the local registry keeps it: no re-hash
        if target.is_dir() and _manifest_matches(target, manifest, files):
            return target
        if target.is_dir() and _folder_matches(target, files):
            _write_manifest(target, manifest, files)
            return target
        downloads = _Downloads(
            self,
            {sha: f"/bases/{_q(base.name)}/files/{_q(rel, safe='/')}" for rel, (sha, _) in files.items()},
            label=f"base {base.name}",
        )
        build_cache_folder(downloads, root, target, files, replace=target.is_dir(), progress=progress)  # type: ignore[arg-type]
        _write_manifest(target, manifest, files)
        logger.info("downloaded base %s (%d files) from %s to %s", base.name, len(files), self.server, target)
        return target


class _HeadRefused(Exception):
    """A HEAD request answered with an error status (HEAD answers carry no problem body)."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class _Downloads:
    """What :func:`registry.folders.build_cache_folder` needs of a blob store, over downloads."""

    fsync = True

    def __init__(self, remote: RemoteRegistry, urls: Mapping[str, str], *, label: str) -> None:
        self.remote = remote
        self.urls = dict(urls)
        self.label = label

    def copy_to(
        self, sha256: str, dest: Path, *, size: int | None = None, progress: Progress | None = None
    ) -> None:
        url = self.urls[sha256]
        self.remote._download(
            url, dest, sha256=sha256, size=size or 0, what=f"a file of {self.label} ({dest.name})"
        )


# ------------------------------------------------------------------------------ helpers


_UPLOAD_FOLDER = re.compile(r"[^'\"\s]*/cache/uploads/\.?register[^'\"\s/]*")
"""The server's temp copy of an uploaded adapter, as its messages name it."""


def _named(value: Any, folder: str) -> Any:
    """``value`` (findings) with the server's upload folder replaced by ``folder``."""
    if isinstance(value, str):
        return _UPLOAD_FOLDER.sub(lambda _: folder, value)
    if isinstance(value, list):
        return [_named(v, folder) for v in value]
    if isinstance(value, dict):
        return {k: _named(v, folder) for k, v in value.items()}
    return value


def _q(part: str, *, safe: str = "") -> str:
    return quote(part, safe=safe)


def _flatten(params: Sequence[tuple[str, Any]]) -> list[tuple[str, Any]]:
    return [(k, ("true" if v else "false") if isinstance(v, bool) else v) for k, v in params]


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _transient(body: Any) -> bool:
    """Whether a 502/503/504 is worth retrying: a proxy's answer, or the database being away
    (not a schema mismatch or a registry whose files do not add up)."""
    if not isinstance(body, dict):
        return True
    return body.get("code") in (None, "database_unavailable")


def _eval_json(spec: EvalInput) -> dict[str, Any]:
    return {"metric": spec.metric, "value": spec.value, "dataset": spec.dataset, "split": spec.split}


def _sha256_of(path: Path) -> str:
    from mergetools.files import sha256_file

    return sha256_file(path)
