"""Health checking, reflection and the Prometheus endpoint of a running server."""

from __future__ import annotations

import re
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase)

from service.api.dcgan.v1 import generator_pb2 as pb

SERVING = health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize("name", ["", "dcgan.v1.GeneratorService", "model/cond", "model/plain"])
def test_health_is_serving_overall_per_service_and_per_model(channel, name):
    health = health_pb2_grpc.HealthStub(channel)
    assert health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status == SERVING


def test_health_of_an_unknown_model_is_not_found(channel):
    with pytest.raises(grpc.RpcError) as err:
        health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="model/nope"), timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    # The message names what to ask for instead.
    assert "'model/nope'" in err.value.details() and "'model/cond'" in err.value.details()


def test_reflection_lists_and_describes_the_services(channel):
    db = ProtoReflectionDescriptorDatabase(channel)
    services = db.get_services()
    assert {"dcgan.v1.GeneratorService", "grpc.health.v1.Health"} <= set(services)
    from google.protobuf.descriptor_pool import DescriptorPool
    pool = DescriptorPool(db)
    method = pool.FindServiceByName("dcgan.v1.GeneratorService").FindMethodByName("Generate")
    assert method.input_type.full_name == "dcgan.v1.GenerateRequest"


def _scrape(server) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics",
                                timeout=5) as r:
        return r.read().decode()


def _value(text: str, name: str, **labels) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            found = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
            if all(found.get(k) == v for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_move_after_calls(server, stub):
    before = _scrape(server)
    stub.Generate(pb.GenerateRequest(seeds=[1, 2, 3], model="plain"), timeout=5)
    with pytest.raises(grpc.RpcError):
        stub.Generate(pb.GenerateRequest(seeds=[], model="plain"), timeout=5)
    after = _scrape(server)

    def delta(name, **labels):
        return _value(after, name, **labels) - _value(before, name, **labels)

    ok = dict(rpc="Generate", model="plain", code="OK")
    assert delta("dcgan_request_duration_seconds_count", **ok) == 1
    assert delta("dcgan_request_duration_seconds_bucket", le="10.0", **ok) == 1
    assert delta("dcgan_request_duration_seconds_count", rpc="Generate", model="plain",
                 code="INVALID_ARGUMENT") == 1
    assert delta("dcgan_inference_duration_seconds_count", model="plain") == 1
    assert delta("dcgan_images_generated_total", model="plain") == 3
    assert delta("dcgan_images_per_request_sum", model="plain") == 3
    assert _value(after, "dcgan_requests_in_flight", rpc="Generate") == 0
    info = [dict(re.findall(r'(\w+)="([^"]*)"', line)) for line in after.splitlines()
            if line.startswith("dcgan_model_info{")]
    version = server.registry.get("plain").version
    assert {"model": "plain", "version": version, "run": version, "arch": "dcgan",
            "dataset": "mnist", "provider": "CPUExecutionProvider"} in info


def test_unknown_model_names_do_not_grow_label_sets(server, stub):
    for name in ("a", "b", "c"):
        with pytest.raises(grpc.RpcError):
            stub.Generate(pb.GenerateRequest(seeds=[1], model=name), timeout=5)
    text = _scrape(server)
    assert 'model="a"' not in text and 'model="_unknown"' in text


def test_a_cancelled_stream_stops_consuming_work(server, stub):
    import time
    before = _value(_scrape(server), "dcgan_images_generated_total", model="plain")
    stream = stub.GenerateStream(pb.GenerateStreamRequest(
        range=pb.SeedRange(start=0, count=1_000_000), chunk_size=64, model="plain"))
    next(stream)
    next(stream)
    stream.cancel()
    time.sleep(1.0)
    produced = _value(_scrape(server), "dcgan_images_generated_total", model="plain") - before
    time.sleep(0.5)
    produced_later = _value(_scrape(server), "dcgan_images_generated_total", model="plain") - before
    # Flow control lets the server run a few chunks ahead of the reader, no more; after the
    # cancel it stops, and the RPC is recorded as CANCELLED.
    assert 128 <= produced < 64 * 50
    assert produced_later == produced
    assert _value(_scrape(server), "dcgan_request_duration_seconds_count",
                  rpc="GenerateStream", model="plain", code="CANCELLED") >= 1
