"""Schemathesis hooks for Skiff's API fuzzer (tests/tests/api_fuzz.rs).

The workload spec's JSON Schema states every rule the gateway enforces but
a few that no JSON Schema can state, because they relate two values of one
request (or the request and the gateway's state); the OpenAPI document
says them in words. For requests generated as valid, these hooks make
those hold, so "valid data accepted" checks everything else:

* PUT /v1/workloads/{name}: the body's name is the path's;
* a container port, and a host port, appear once per protocol;
* `placement.prefer` names only sites in `placement.sites` (when given);
* the spec's `namespace` is one that exists (`default`: the fuzzer makes
  none) and the request's;
* a mount names a volume of `volumes`.

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
    if "namespace" in body:
        body["namespace"] = "default"
    if isinstance(body.get("mounts"), list):
        names = {v.get("name") for v in body.get("volumes") or [] if isinstance(v, dict)}
        body["mounts"] = [
            m for m in body["mounts"] if not isinstance(m, dict) or m.get("volume") in names
        ]
    placement = body.get("placement")
    if isinstance(placement, dict):
        sites = placement.get("sites") or []
        prefer = placement.get("prefer")
        if sites and isinstance(prefer, list):
            placement["prefer"] = [s for s in prefer if s in sites]
    return case
