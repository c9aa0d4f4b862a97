"""Schemathesis hooks for Skiff's API fuzzer (tests/tests/api_fuzz.rs).

The workload spec's JSON Schema states every rule the gateway enforces but
three that no JSON Schema can state, because they relate two values of one
request; the OpenAPI document says them in words. For requests generated as
valid, these hooks make those three hold, so "valid data accepted" checks
everything else:

* PUT /v1/workloads/{name}: the body's name is the path's;
* a container port, and a host port, appear once per protocol;
* `placement.prefer` names only sites in `placement.sites` (when given).

Requests generated as invalid are left as they are.
"""

import schemathesis

SPEC_BODIES = {("POST", "/v1/workloads"), ("PUT", "/v1/workloads/{name}")}


def _positive(case):
    meta = getattr(case, "meta", None)
    return meta is not None and meta.generation.mode.is_positive


def _once_per_protocol(ports):
    seen_container, seen_host, kept = set(), set(), []
    for port in ports:
        if not isinstance(port, dict):
            return ports
        protocol = port.get("protocol") or "tcp"
        container = (port.get("container"), protocol)
        host = (port.get("host"), protocol)
        if container in seen_container or (port.get("host") is not None and host in seen_host):
            continue
        seen_container.add(container)
        seen_host.add(host)
        kept.append(port)
    return kept


@schemathesis.hook
def map_case(context, case):
    op = case.operation
    if (op.method.upper(), op.path) not in SPEC_BODIES or not _positive(case):
        return case
    body = case.body
    if not isinstance(body, dict):
        return case
    if op.method.upper() == "PUT" and "name" in (case.path_parameters or {}):
        body["name"] = case.path_parameters["name"]
    if isinstance(body.get("ports"), list):
        body["ports"] = _once_per_protocol(body["ports"])
    placement = body.get("placement")
    if isinstance(placement, dict):
        sites = placement.get("sites") or []
        prefer = placement.get("prefer")
        if sites and isinstance(prefer, list):
            placement["prefer"] = [s for s in prefer if s in sites]
    return case
