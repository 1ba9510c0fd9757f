"""Who is calling, and may they: every route declares its scope in its decorator.

    @router.get("/stats", dependencies=[Scope(READ)])

``Scope`` authenticates the request once and refuses it unless the caller holds the scope
(``shared.scopes``: admin implies jobs:write, which implies jobs:read); a route that
needs the caller (its namespace) takes a ``Caller`` parameter. ``install`` refuses to
build an app with a route that declares nothing, so a new route cannot be open by
accident. ``Public()`` declares a route open on purpose (/health).

Where the caller comes from, in this order:

- ``AJS_AUTH_DISABLED=true``: everyone is an unbound admin (a private machine only).
- Behind API Gateway (Mangum puts the Lambda event in the ASGI scope as ``aws.event``;
  only API Gateway writes ``requestContext``, a client cannot): the JWT authorizer's
  claims (scopes from ``scope``/``scp`` and the authorizer's ``scopes``, the namespace
  from ``AJS_AUTH_JWT_NAMESPACE_CLAIM``), or the IAM authorizer's principal ARN mapped by
  ``AJS_AUTH_IAM_PRINCIPALS``. API Gateway already verified the token or the signature.
- Otherwise an API key: ``Authorization: Bearer ajs_...``, looked up by its SHA-256 and
  cached in process for ``AJS_AUTH_CACHE_SECONDS``, so the hot path costs a dict lookup;
  a revocation takes effect within that time.

A missing or unaccepted credential is 401 with a ``WWW-Authenticate: Bearer`` challenge;
a valid one without the scope is 403; both in the one error shape.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.routing import APIRoute

from functions.api.errors import edit_openapi
from shared.connections import Stores
from shared.errors import Forbidden, InvalidCredential, OtherNamespace, Unauthorized
from shared.observability.logs import get_logger
from shared.scopes import ADMIN, NAMESPACE_PATTERN, READ, WRITE, expand
from shared.settings import Settings
from shared.store.api_keys import ApiKeyStore, digest, looks_like_key

log = get_logger("api")

__all__ = ["ADMIN", "READ", "WRITE", "Caller", "NamespaceQuery", "Principal", "Public",
           "Scope", "in_view", "install"]

TOUCH_SECONDS = 60.0  # last_used_at is written at most this often per key (and process)
CACHE_MAX = 10_000  # keys remembered per process; past that the cache starts afresh
_NAMESPACE = re.compile(NAMESPACE_PATTERN)


@dataclass(frozen=True, slots=True)
class Principal:
    subject: str  # for logs: "key ajs_Ab12cd34 (billing)", "jwt <sub>", "iam <arn>"
    scopes: frozenset[str]  # with what they imply
    namespace: str | None  # the tenant; None: unbound, sees every job

    def may(self, scope: str) -> bool:
        return scope in self.scopes


UNRESTRICTED = Principal("auth disabled", expand([ADMIN]), None)


class Authenticator:
    """One per app: the settings it follows and the API key cache."""

    def __init__(self, settings: Settings, stores: Stores) -> None:
        self.settings = settings
        self.stores = stores
        self._cache: dict[bytes, tuple[float, Principal | None]] = {}

    async def principal(self, request: Request) -> Principal:
        if self.settings.auth_disabled:
            return UNRESTRICTED
        event = request.scope.get("aws.event")
        context = event.get("requestContext") if isinstance(event, dict) else None
        authorizer = context.get("authorizer") if isinstance(context, dict) else None
        if isinstance(authorizer, dict):
            if isinstance(authorizer.get("jwt"), dict):
                return self._from_jwt(authorizer["jwt"])
            if isinstance(authorizer.get("iam"), dict):
                return self._from_iam(authorizer["iam"])
        return await self._from_key(request.headers.get("authorization"))

    # --- API keys -----------------------------------------------------------------------

    async def _from_key(self, header: str | None) -> Principal:
        if not header:
            raise Unauthorized("missing credential: send Authorization: Bearer <API key>")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise InvalidCredential("malformed Authorization header: expected "
                                    "'Bearer <API key>'")
        if not looks_like_key(token):
            raise InvalidCredential("not an API key of this service")
        found = await self._lookup(digest(token))
        if found is None:
            raise InvalidCredential("unknown or revoked API key")
        return found

    async def _lookup(self, key_digest: bytes) -> Principal | None:
        now = time.monotonic()
        cached = self._cache.get(key_digest)
        if cached is not None and cached[0] > now:
            return cached[1]
        pool = await self.stores.pool()
        # The touch interval is never shorter than the cache time: a lookup happens at
        # most once per cache period anyway.
        row = await ApiKeyStore(pool).lookup(
            key_digest, max(TOUCH_SECONDS, self.settings.auth_cache_seconds))
        found = None if row is None else Principal(
            f"key {row['prefix']} ({row['name']})", expand(row["scopes"]), row["namespace"])
        if self.settings.auth_cache_seconds > 0:
            if len(self._cache) >= CACHE_MAX:
                self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
                if len(self._cache) >= CACHE_MAX:
                    self._cache.clear()
            # Unknown keys are remembered too: a client retrying a bad key costs no query.
            self._cache[key_digest] = (now + self.settings.auth_cache_seconds, found)
        return found

    # --- behind API Gateway -------------------------------------------------------------

    def _from_jwt(self, jwt: dict[str, Any]) -> Principal:
        claims = jwt.get("claims") if isinstance(jwt.get("claims"), dict) else {}
        assert isinstance(claims, dict)
        granted = set(_words(jwt.get("scopes")))
        for name in ("scope", "scp"):
            granted |= set(_words(claims.get(name)))
        prefix = self.settings.auth_jwt_scope_prefix
        ours = [s[len(prefix):] for s in granted if s.startswith(prefix)]
        namespace = claims.get(self.settings.auth_jwt_namespace_claim) or None
        subject = f"jwt {claims.get('sub', '?')}"
        return Principal(subject, expand(ours), _namespace(namespace))

    def _from_iam(self, iam: dict[str, Any]) -> Principal:
        arn = str(iam.get("userArn") or "")
        grants = self.settings.auth_iam_principals
        grant = grants.get(arn) or grants.get(_role_arn(arn))
        if grant is None:  # authenticated by AWS, but given nothing here: 403 on use
            return Principal(f"iam {arn}", frozenset(), None)
        return Principal(f"iam {arn}", expand(grant.scopes), grant.namespace)


def _words(value: Any) -> list[str]:
    """Scopes as a list, or as API Gateway flattens claims: "a b" or "[a b]"."""
    if isinstance(value, list):
        return [str(v) for v in value]
    if isinstance(value, str):
        return [w for w in re.split(r"[\s,]+", value.strip().strip("[]")) if w]
    return []


def _namespace(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _NAMESPACE.match(value):
        # A token we cannot place in a tenant must not fall back to seeing every tenant.
        raise InvalidCredential(f"the token's namespace claim is not a namespace "
                                f"({NAMESPACE_PATTERN})")
    return value


def _role_arn(arn: str) -> str:
    """``arn:aws:sts::123:assumed-role/NAME/session`` -> ``arn:aws:iam::123:role/NAME``
    (an STS ARN drops the role's path, so the mapping names roles without one)."""
    m = re.match(r"^arn:(aws[a-z-]*):sts::(\d{12}):assumed-role/([^/]+)/", arn)
    return f"arn:{m[1]}:iam::{m[2]}:role/{m[3]}" if m else arn


# --- what routes declare -----------------------------------------------------------------

# The scheme as OpenAPI documents it (Swagger UI's Authorize button). It is written into
# the document by ``_document`` rather than declared as a ``Security(HTTPBearer)``
# sub-dependency: that one only documents (Requirement reads the header itself, since
# behind API Gateway the caller comes from the event instead), yet FastAPI would solve it
# on every request, about 5 % of a create's CPU.
BEARER_SCHEME = "bearer"
_BEARER_DOC = {
    "type": "http",
    "scheme": "bearer",
    "bearerFormat": "API key (ajs_...)",
    "description": "An API key (python -m functions.api.keys create), or behind API "
                   "Gateway's JWT authorizer the token.",
}


class Requirement:
    """The dependency ``Scope()`` puts on a route; ``scope`` None: public."""

    def __init__(self, scope: str | None) -> None:
        self.scope = scope

    async def __call__(self, request: Request) -> None:
        if self.scope is None:
            return
        authenticator: Authenticator = request.app.state.authenticator
        principal = await authenticator.principal(request)
        if not principal.may(self.scope):
            raise Forbidden(f"this credential ({principal.subject}) lacks the scope "
                            f"{self.scope}", self.scope)
        request.state.principal = principal


def Scope(scope: str) -> Any:  # a capital: it reads as a declaration in the decorator
    if scope not in (READ, WRITE, ADMIN):
        raise ValueError(f"unknown scope {scope!r}")
    return Depends(Requirement(scope))


def Public() -> Any:
    return Depends(Requirement(None))


async def _caller(request: Request) -> Principal:
    principal: Principal | None = getattr(request.state, "principal", None)
    if principal is None:  # install() makes this unreachable: a route without a scope
        raise RuntimeError(f"{request.url.path} takes a Caller but declares no Scope")
    return principal


Caller = Annotated[Principal, Depends(_caller)]


NamespaceQuery = Annotated[str | None, Query(
    max_length=63, pattern=NAMESPACE_PATTERN,
    description="Only this namespace's jobs. A credential bound to a namespace sees only "
    "its own: naming another is a 403.")]


def in_view(caller: Principal, asked: str | None) -> str | None:
    """The namespace a read covers: a bound caller's own (naming another is refused, not
    silently narrowed, so a console never shows one tenant's page under another's name);
    for an unbound caller the one asked for, or None for every job."""
    if caller.namespace is None:
        return asked
    if asked is not None and asked != caller.namespace:
        raise OtherNamespace(caller.namespace, asked)
    return caller.namespace


def declared(route: APIRoute) -> Requirement | None:
    """The requirement a route declares in its decorator (or its router's)."""
    for dependency in route.dependencies:
        if isinstance(dependency.dependency, Requirement):
            return dependency.dependency
    return None


@dataclass(frozen=True, slots=True)
class DeclaredRoute:
    method: str
    path: str  # with the API prefix: /api/v1/jobs/{job_id}
    requirement: Requirement | None


def routes_of(app: FastAPI, routers: Sequence[APIRouter]) -> list[DeclaredRoute]:
    """Every API route with what it declares: those of the routers (read from the routers
    themselves: recent FastAPI releases no longer list included routes in ``app.routes``)
    and any added to the app directly."""
    prefix = app.state.settings.api_prefix
    # path_format: the path as OpenAPI writes it, without a convertor ({job_id:job_id}).
    found = [(prefix + r.path_format, r) for router in routers for r in router.routes
             if isinstance(r, APIRoute)]
    found += [(r.path_format, r) for r in app.routes if isinstance(r, APIRoute)]
    out = {(m, path): DeclaredRoute(m, path, declared(r))
           for path, r in found for m in sorted(r.methods or ())}
    return list(out.values())


def install(app: FastAPI, settings: Settings, stores: Stores,
            routers: Sequence[APIRouter]) -> None:
    """Attach the authenticator; refuse a route that declares no scope."""
    app.state.routes = routes_of(app, routers)
    undeclared = [f"{r.method} {r.path}" for r in app.state.routes if r.requirement is None]
    if undeclared:
        raise RuntimeError("routes without a declared Scope() or Public(): "
                           + ", ".join(undeclared))
    app.state.authenticator = Authenticator(settings, stores)
    _document(app)
    if settings.auth_disabled:
        log.warning("AJS_AUTH_DISABLED=true: every request is treated as an unbound admin")


def _document(app: FastAPI) -> None:
    """Each scoped operation names its scope and the bearer scheme, and documents its 401
    and 403."""
    def scopes(schema: dict[str, Any]) -> None:
        schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
        schemes[BEARER_SCHEME] = dict(_BEARER_DOC)
        error = {"content": {"application/json": {"schema": {
            "$ref": "#/components/schemas/ErrorResponse"}}}}
        for route in app.state.routes:
            op = schema.get("paths", {}).get(route.path, {}).get(route.method.lower())
            if op is None or route.requirement is None or route.requirement.scope is None:
                continue
            scope = route.requirement.scope
            op["security"] = [{BEARER_SCHEME: []}]
            op["description"] = (op.get("description", "") + f"\n\nNeeds the scope `{scope}` "
                                 "(or one that implies it).").strip()
            op["responses"]["401"] = {**error, "description": "No credential, or not one "
                                      "accepted (missing, malformed, unknown, revoked)"}
            op["responses"]["403"] = {**error, "description": f"The credential lacks {scope}"}

    edit_openapi(app, scopes)
