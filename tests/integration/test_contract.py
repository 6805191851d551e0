"""The published contract: a valid OpenAPI 3.1 document listing every route, and the
interactive reference served by the API itself, with nothing loaded from elsewhere."""

from __future__ import annotations

import asyncio
import copy
import re
from typing import Any

import httpx
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import OpenAPIV31SpecValidator, validate
from starlette.routing import Route

from api.app import create_app
from api.contract import declared
from infra.audit.chain import chain_hash
from tests.integration.client import VotingClient, assert_problem, bearer
from tests.servers import ADMIN, AUDITOR, CLIENT, settings_for

# pydantic names that leak into a schema when a constraint is placed after a validator:
# valid JSON Schema keywords they are not, so clients and fuzzers would ignore the bounds.
LEAKED = {"ge", "gt", "le", "lt", "min_length", "max_length", "multiple_of"}


async def _document(http: httpx.AsyncClient) -> dict[str, Any]:
    response = await http.get("/openapi.json")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    document: dict[str, Any] = response.json()
    return document


async def test_the_document_is_valid_openapi_3_1(http: httpx.AsyncClient) -> None:
    document = await _document(http)
    assert document["openapi"] == "3.1.0"
    validate(document, cls=OpenAPIV31SpecValidator)
    assert list(OpenAPIV31SpecValidator(document).iter_errors()) == []


async def test_every_route_is_in_the_document(http: httpx.AsyncClient) -> None:
    document = await _document(http)
    app = create_app(settings_for("postgresql://unused"))
    routes = declared(app.routes)
    assert len(routes) >= 20
    undeclared = [(path, method) for path, method, spec in routes if spec is None]
    assert undeclared == [], "declare these with @operation(...)"
    for path, method, _ in routes:
        assert method in document["paths"].get(path, {}), (path, method)
    listed = {(path, method) for path, methods in document["paths"].items() for method in methods}
    assert listed == {(path, method) for path, method, _ in routes}
    # Routes kept out of the contract on purpose are the contract's own.
    hidden = {r.path for r in app.routes if isinstance(r, Route) and not r.include_in_schema}
    assert hidden == {
        "/openapi.json",
        "/docs",
        "/docs/init.js",
        "/docs/static/{name}",
        # the dashboards (HTML pages, their fragments and assets)
        "/",
        "/results",
        "/overview/panel",
        "/elections/{election_id}",
        "/elections/{election_id}/panel",
        "/static/{name}",
        "/favicon.ico",
    }


async def test_every_operation_says_how_it_refuses_and_who_may_call_it(
    http: httpx.AsyncClient,
) -> None:
    document = await _document(http)
    problem = document["components"]["schemas"]["Problem"]
    assert set(problem["required"]) >= {"title", "status", "detail"}
    ids = set()
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            ids.add(operation["operationId"])
            codes = {int(code) for code in operation["responses"]}
            assert any(200 <= code < 300 for code in codes), (path, method)
            for code in codes - set(range(200, 300)) - {304}:  # 304: no body
                content = operation["responses"][str(code)]["content"]
                assert content["application/problem+json"]["schema"] == {
                    "$ref": "#/components/schemas/Problem"
                }
            if operation["security"]:
                # [..., {}]: the token is optional (elections with public results)
                assert operation["security"] in ([{"bearerAuth": []}], [{"bearerAuth": []}, {}])
                assert 401 in codes, (path, method)
            body = operation.get("requestBody")
            if body is not None:
                assert {400, 413, 415, 422} <= codes, (path, method)
                schema = _resolve(document, body["content"]["application/json"]["schema"])
                assert schema["additionalProperties"] is False, (path, method)
    assert document["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    # Links name operations that exist (the validator does not check this).
    for methods in document["paths"].values():
        for operation in methods.values():
            for response in operation["responses"].values():
                for link in response.get("links", {}).values():
                    assert link["operationId"] in ids, link
    ballots = document["paths"]["/api/elections/{election_id}/ballots"]["post"]
    assert {"429", "409", "403", "404"} <= set(ballots["responses"])
    assert "Retry-After" in ballots["responses"]["429"]["headers"]


async def test_the_streams_declare_their_429_with_retry_after(http: httpx.AsyncClient) -> None:
    """Both streams answer 429 "Too many streams" (with Retry-After) past STREAMS_PER_CLIENT,
    which their operations did not declare: a client generated from the contract had no
    case for it."""
    document = await _document(http)
    for path in ("/api/elections/{election_id}/results/stream", "/api/elections/stream"):
        refused = document["paths"][path]["get"]["responses"]["429"]
        assert refused["content"]["application/problem+json"]["schema"] == {
            "$ref": "#/components/schemas/Problem"
        }
        assert refused["headers"]["Retry-After"]["required"] is True
        assert "STREAMS_PER_CLIENT" in refused["description"]


async def test_no_constraint_leaks_under_a_pydantic_name(http: httpx.AsyncClient) -> None:
    document = await _document(http)
    found: list[str] = []

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in LEAKED and where.rsplit("/", maxsplit=1)[-1] != "properties":
                    found.append(f"{where}/{key}")
                walk(value, f"{where}/{key}")
        elif isinstance(node, list):
            for n, value in enumerate(node):
                walk(value, f"{where}/{n}")

    walk(document, "")
    assert found == []
    step = document["components"]["schemas"]["ElectionIn"]["properties"]["live_results_step"]
    assert (step["minimum"], step["maximum"]) == (1, 1_000_000)


async def test_served_elections_and_stv_results_have_only_the_fields_the_schema_lists(
    http: httpx.AsyncClient,
) -> None:
    """The schemas allow fields they do not list (a field added later breaks no client),
    so a served field the schema forgot went unnoticed: IRV elections' ``counting``, for
    one (and every new election's ``voter_ids``). Closed (no unlisted property), the
    schemas must still take what is served; and STV's votes, served as decimal texts with
    five places, are documented as such."""
    document = await _document(http)
    schemas = copy.deepcopy(document["components"]["schemas"])
    for schema in schemas.values():
        if "properties" in schema:
            schema["additionalProperties"] = False
    voting = VotingClient(http)
    irv = await voting.open_election("irv")
    stv = await voting.open_election(
        "stv", seats=2, options=[{"id": i, "label": i} for i in "abcd"]
    )
    for n, ranking in enumerate([["a", "b"], ["d", "c", "b", "a"], ["c"], ["c", "a"]]):
        cast = await voting.cast(stv, {"ranking": ranking}, f"voter-{n}")
        assert cast.status_code in (200, 201), cast.text
    position = cast.json()["position"]
    served = {
        "Election": [
            (await http.get(f"/api/elections/{i}", headers=bearer(ADMIN))).json()
            for i in (irv, stv)
        ],
        "Results": [(await voting.results(stv, min_position=position)).json()],
    }
    assert served["Election"][0]["counting"] == 2
    assert served["Election"][0]["voter_ids"] == "nfc"  # a rule pinned per election, too
    assert served["Results"][0]["stages"][1]["action"] == "exclusion"
    for name, answers in served.items():
        validator = OAS31Validator(
            {"$ref": f"#/components/schemas/{name}", "components": {"schemas": schemas}}
        )
        for answer in answers:
            errors = [f"{e.json_path}: {e.message}" for e in validator.iter_errors(answer)]
            assert errors == [], (name, answer)
    stage = document["components"]["schemas"]["Stage"]["properties"]
    votes = stage["exhausted"]["pattern"]
    assert votes == r"^[0-9]+\.[0-9]{5}$"
    assert stage["counts"]["additionalProperties"]["pattern"] == votes
    for field in (stage["surplus"], stage["transfer_value"]):
        assert {"type": "string", "pattern": votes} in field["anyOf"], field
    quota = document["components"]["schemas"]["Results"]["properties"]["quota"]
    assert {"type": "string", "pattern": votes} in quota["anyOf"], quota


async def test_the_reference_is_served_with_no_asset_from_elsewhere(
    http: httpx.AsyncClient,
) -> None:
    page = await http.get("/docs")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy
    assert "frame-ancestors 'none'" in policy
    sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert sources, page.text
    assert all(source.startswith("/docs/") for source in sources), sources
    for source in sources:
        asset = await http.get(source)
        assert asset.status_code == 200, source
        assert len(asset.content) > 20
    init = await http.get("/docs/init.js")
    assert "/openapi.json" in init.text
    bundle = await http.get("/docs/static/swagger-ui-bundle.js")
    assert len(bundle.content) > 500_000  # Swagger UI itself, from the installed package


async def test_the_reference_serves_only_the_files_its_page_loads(
    http: httpx.AsyncClient,
) -> None:
    """/docs/static/ served the package's whole directory: Swagger UI's demo index.html
    (it fetches petstore.swagger.io), oauth2-redirect.html and index.j2, on this origin and
    without the page's policy (review web, 4)."""
    stock = ["index.html", "oauth2-redirect.html", "oauth2-redirect.js", "index.j2"]
    for name in [*stock, "swagger-initializer.js", "swagger-ui.js", "favicon-32x32.png"]:
        answer = await http.get(f"/docs/static/{name}")
        assert answer.status_code == 404, name
        assert "petstore" not in answer.text
    for name in ("swagger-ui-bundle.js", "swagger-ui.css"):
        answer = await http.get(f"/docs/static/{name}")
        assert answer.status_code == 200, name
        policy = answer.headers["content-security-policy"]
        assert "default-src 'none'" in policy
        assert "frame-ancestors 'none'" in policy
        assert answer.headers["x-content-type-options"] == "nosniff"
    assert "content-security-policy" in (await http.get("/docs/init.js")).headers


def _resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if ref is None:
        return schema
    found: dict[str, Any] = document["components"]["schemas"][ref.rsplit("/", 1)[-1]]
    return found


# Regressions found by schemathesis (tests/integration/test_contract_fuzzing.py).


async def test_a_whole_number_written_with_a_fraction_is_a_whole_number(
    http: httpx.AsyncClient,
) -> None:
    """JSON Schema counts 175.0 as an integer, so the API must too."""
    created = await http.post(
        "/api/elections",
        json={
            "title": "Whole",
            "method": "plurality",
            "eligibility": "tokens",
            "options": [{"id": "a", "label": "A"}, {"id": "b", "label": "B"}],
            "live_results_step": 3.0,
        },
        headers=bearer(ADMIN),
    )
    assert created.status_code == 201, created.text
    assert created.json()["live_results_step"] == 3
    issued = await http.post(
        f"/api/elections/{created.json()['id']}/tokens",
        content=b'{"count": 2.0}',
        headers={**bearer(ADMIN), "Content-Type": "application/json"},
    )
    assert issued.status_code == 201, issued.text
    assert len(issued.json()["tokens"]) == 2
    fraction = await http.post(
        f"/api/elections/{created.json()['id']}/tokens",
        content=b'{"count": 2.5}',
        headers={**bearer(ADMIN), "Content-Type": "application/json"},
    )
    assert_problem(fraction, 422, "count")


async def test_an_unknown_query_parameter_is_refused_not_ignored(
    http: httpx.AsyncClient,
) -> None:
    response = await http.get("/api/audit/events", params={"afterr": 5}, headers=bearer(AUDITOR))
    problem = assert_problem(response, 422, "unknown query parameter 'afterr'")
    assert problem["field"] == "afterr"
    assert "after, limit" in problem["detail"]


async def test_every_operation_declares_the_422_of_an_unknown_query_parameter(
    http: httpx.AsyncClient,
) -> None:
    """Every operation refuses a query parameter it does not take (or one given twice)
    with 422, those that take no parameter too: the contract listed 422 only where an
    operation took a query or header parameter (GET /api/health?foo=1 answered a 422 its
    operation did not declare)."""
    document = await _document(http)
    for path, methods in document["paths"].items():
        url = re.sub(r"\{[a-z_]+\}", "00000000-0000-0000-0000-000000000000", path)
        for method, operation in methods.items():
            assert "422" in operation["responses"], (path, method)
            # (a stream too: refused before it starts; a rebuild: before it is started)
            response = await http.request(
                method.upper(), url, params={"foo": "1"}, headers=bearer(ADMIN)
            )
            problem = assert_problem(response, 422, "unknown query parameter 'foo'")
            assert problem["field"] == "foo"
    health = await http.get("/api/health?foo=1")
    assert_problem(health, 422, "this operation takes none")
    twice = await http.get("/api/audit/events?after=1&after=2", headers=bearer(AUDITOR))
    assert_problem(twice, 422, "given more than once")


async def test_the_batch_body_schema_takes_what_the_server_takes(
    voting: VotingClient, http: httpx.AsyncClient
) -> None:
    """A batch's items are validated one by one: an item that is no ballot is refused in
    its own result, and the request answered 200. The published items were ballot objects,
    so a client or fuzzer held to the schema took {"ballots": [[null, null]]} for a body
    the server refuses (schemathesis ST201); they are published loosely, as a ballot or
    anything else, with the ballot's schema kept for the clients that build one."""
    document = await _document(http)
    operation = document["paths"]["/api/elections/{election_id}/ballots/batch"]["post"]
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    validator = OAS31Validator(
        {**schema, "components": document["components"]}
        if "$ref" not in schema
        else {"$ref": schema["$ref"], "components": document["components"]}
    )
    election_id = await voting.open_election("plurality")
    odd = [[None, None], 5, "x", {"voter_id": 7}, {"voter_id": "v", "choice": "a", "x": 1}]
    body = {"ballots": [*odd, {"voter_id": "fine", "choice": "a"}]}
    assert [e.message for e in validator.iter_errors(body)] == []
    items = _resolve(document, schema)["properties"]["ballots"]["items"]
    assert "validated on its own" in items["description"]
    ballot = items["anyOf"][0]
    assert ballot["additionalProperties"] is False
    assert set(ballot["properties"]) >= {"voter_id", "choice", "idempotency_key"}
    response = await http.post(
        f"/api/elections/{election_id}/ballots/batch", json=body, headers=bearer(CLIENT)
    )
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["status"] for r in results[: len(odd)]] == [422] * len(odd)
    assert results[0]["field"] == "ballots[0]"
    assert results[-1]["version"] == 1


async def test_results_before_the_read_models_exist_are_503_not_500(
    fresh_database_url: str,
) -> None:
    """Right after a fresh start the projections have not yet created their read models."""
    from infra.store.migrations import migrate
    from tests.integration.client import VotingClient
    from tests.servers import running_api

    migrate(fresh_database_url)
    async with (
        running_api(settings_for(fresh_database_url), projections=()) as url,
        httpx.AsyncClient(base_url=url, timeout=30) as http,
    ):
        election_id = await VotingClient(http).open_election()
        response = await http.get(f"/api/elections/{election_id}/results", headers=bearer(AUDITOR))
        assert_problem(response, 503, "read models are still being set up")
        assert response.headers["retry-after"] == "1"


async def test_a_negative_min_position_is_refused_with_time_travel_too(
    http: httpx.AsyncClient,
) -> None:
    """With ``at``, ``min_position`` decides nothing, but the contract still bounds it."""
    from tests.integration.client import VotingClient

    election_id = await VotingClient(http).open_election()
    response = await http.get(
        f"/api/elections/{election_id}/results",
        params={"at": 1, "min_position": -2},
        headers=bearer(AUDITOR),
    )
    problem = assert_problem(response, 422, "min_position must be from 0")
    assert problem["field"] == "min_position"


async def test_a_receipts_hash_is_the_entry_hash_and_its_lookup_gives_the_events_hash(
    voting: VotingClient, http: httpx.AsyncClient
) -> None:
    """A client matched receipts to audit events by ``hash`` and found none: the receipt
    carries the entry hash, the events the chain link. The contract says which is which,
    and how to go from one to the other, as this test does."""
    election_id = await voting.open_election()
    cast = (await voting.cast(election_id, {"choice": "a"}, voting.voter())).json()
    for _ in range(200):  # (until the sealer has linked the entry: ms, usually)
        looked_up = await http.get(f"/api/audit/receipts/{cast['hash']}")
        if looked_up.status_code == 200:
            break
        await asyncio.sleep(0.05)
    assert looked_up.status_code == 200, looked_up.text
    found = looked_up.json()
    page = await http.get(
        "/api/audit/events",
        params={"after": cast["position"] - 1, "limit": 1},
        headers=bearer(AUDITOR),
    )
    event = page.json()["events"][0]
    assert event["position"] == found["position"] == cast["position"]
    assert event["hash"] != cast["hash"]
    assert event["hash"] == found["chain_hash"]
    link = chain_hash(bytes.fromhex(event["prev_hash"]), bytes.fromhex(cast["hash"]))
    assert link.hex() == event["hash"]
    schemas = (await http.get("/openapi.json")).json()["components"]["schemas"]
    assert "chain_hash" in schemas["BallotReceipt"]["properties"]["hash"]["description"]
    assert "receipt" in schemas["LogEntry"]["properties"]["hash"]["description"]


async def test_a_422s_errors_are_declared_in_the_problem_schema(
    voting: VotingClient, http: httpx.AsyncClient
) -> None:
    """422 "Invalid request" problems carry ``errors[]`` (each issue's field and message),
    which the Problem schema did not declare."""
    document = await _document(http)
    schemas = document["components"]["schemas"]
    errors = schemas["Problem"]["properties"]["errors"]
    issue = _resolve(document, errors["anyOf"][0]["items"])
    assert set(issue["required"]) == {"field", "message"}
    election_id = await voting.open_election()
    refused = await voting.cast(election_id, {"choice": 5, "extra": 1}, voting.voter())
    problem = assert_problem(refused, 422, "choice")
    assert len(problem["errors"]) == 2
    validator = OAS31Validator(
        {"$ref": "#/components/schemas/Problem", "components": {"schemas": schemas}}
    )
    assert [e.message for e in validator.iter_errors(problem)] == []
