"""Hostile input: property-based requests (hypothesis) and raw malformed frames. Every call is
answered with a status, none crashes the server, and it keeps serving correct images."""

from __future__ import annotations

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.api.dcgan.v1 import generator_pb2 as pb

UINT64 = st.integers(min_value=0, max_value=2**64 - 1)
UINT32 = st.integers(min_value=0, max_value=2**32 - 1)
EXPECTED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}

requests = st.builds(
    pb.GenerateRequest,
    seeds=st.one_of(st.lists(UINT64, max_size=300),
                    st.lists(UINT64, min_size=1, max_size=3).map(lambda s: s * 200)),
    labels=st.one_of(st.lists(UINT32, max_size=5), st.lists(st.integers(0, 9), max_size=300)),
    model=st.one_of(st.sampled_from(["", "cond", "plain"]), st.text(max_size=40)),
    format=st.integers(min_value=-2**31, max_value=2**31 - 1),
)

stream_requests = st.one_of(
    st.builds(pb.GenerateStreamRequest,
              range=st.builds(pb.SeedRange, start=UINT64, count=st.integers(0, 600)),
              labels=st.lists(UINT32, max_size=3), model=st.sampled_from(["", "plain", "x"]),
              format=st.integers(-3, 5), chunk_size=UINT32),
    st.builds(pb.GenerateStreamRequest, list=st.builds(pb.SeedList,
                                                       seeds=st.lists(UINT64, max_size=50)),
              labels=st.lists(UINT32, max_size=60)),
    st.just(pb.GenerateStreamRequest()),
)


def _status(call) -> grpc.StatusCode:
    try:
        call()
        return grpc.StatusCode.OK
    except grpc.RpcError as err:
        assert err.details(), "every refusal carries a message"
        return err.code()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(request=requests)
def test_any_generate_request_gets_a_status(stub, request):
    code = _status(lambda: stub.Generate(request, timeout=20))
    assert code in EXPECTED, (code, request)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(request=stream_requests)
def test_any_stream_request_gets_a_status(stub, request):
    code = _status(lambda: list(stub.GenerateStream(request, timeout=20)))
    assert code in EXPECTED, (code, request)


@settings(max_examples=100, deadline=None)
@given(payload=st.binary(max_size=2000))
def test_malformed_frames_are_refused_and_serving_goes_on(channel, stub, payload):
    raw = channel.unary_unary("/dcgan.v1.GeneratorService/Generate",
                              request_serializer=None, response_deserializer=None)
    try:
        raw(payload, timeout=10)  # some byte strings are valid (empty) requests
    except grpc.RpcError as err:
        assert err.code() in {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.INTERNAL,
                              grpc.StatusCode.NOT_FOUND}, err
    assert stub.Generate(pb.GenerateRequest(seeds=[7]), timeout=10).count == 1


def test_unknown_methods_and_an_oversized_message(channel, stub):
    unknown = channel.unary_unary("/dcgan.v1.GeneratorService/Nope", request_serializer=None,
                                  response_deserializer=None)
    assert _status(lambda: unknown(b"", timeout=5)) == grpc.StatusCode.UNIMPLEMENTED
    huge = pb.GenerateRequest(seeds=[1], model="m" * (65 << 20))  # past the 64 MiB limit
    assert _status(lambda: stub.Generate(huge, timeout=20)) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert stub.Generate(pb.GenerateRequest(seeds=[7]), timeout=10).count == 1


def test_enormous_repeated_fields_up_to_the_message_limit(stub):
    """The receive limit follows from the largest valid request (this server: 256 latents of
    100 floats, about 170 kB): past it grpc refuses before anything is parsed; below it, the
    counts are checked before any value is converted."""
    import time
    over = pb.GenerateRequest(seeds=[2**64 - 1] * 3_000_000)  # ~30 MB on the wire
    assert _status(lambda: stub.Generate(over, timeout=60)) == \
        grpc.StatusCode.RESOURCE_EXHAUSTED
    seeds = pb.GenerateRequest(seeds=[2**64 - 1] * 16_000)  # ~160 kB
    labels = pb.GenerateRequest(seeds=[1], labels=[2**32 - 1] * 30_000)  # ~150 kB
    for request, message in ((seeds, "16000 seeds"), (labels, "labels")):
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as err:
            stub.Generate(request, timeout=60)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in err.value.details()
        assert time.monotonic() - started < 30
    stream = pb.GenerateStreamRequest(list=pb.SeedList(seeds=list(range(40_000))),
                                      labels=[1, 2])
    with pytest.raises(grpc.RpcError) as err:
        list(stub.GenerateStream(stream, timeout=60))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert stub.Generate(pb.GenerateRequest(seeds=[7]), timeout=10).count == 1


# --- the Open Inference Protocol's ModelInfer -------------------------------------------------

from service.api.inference import grpc_predict_v2_pb2 as v2  # noqa: E402
from service.api.inference import grpc_predict_v2_pb2_grpc as v2_grpc  # noqa: E402

DATATYPES = st.one_of(st.sampled_from(["UINT64", "INT64", "INT32", "FP32", "BYTES", "UINT8"]),
                      st.text(max_size=12))
NAMES = st.one_of(st.sampled_from(["seeds", "labels", "images", "latents", "psi", "frames"]),
                  st.text(max_size=12))
PARAMETER = st.one_of(st.builds(v2.InferParameter, bool_param=st.booleans()),
                      st.builds(v2.InferParameter, int64_param=st.integers(-2**63, 2**63 - 1)),
                      st.builds(v2.InferParameter, string_param=st.one_of(
                          st.sampled_from(["slerp", "lerp"]), st.text(max_size=20))))
PARAMETER_KEYS = st.one_of(st.just("interpolation"), st.text(max_size=8))


@st.composite
def infer_requests(draw):
    request = v2.ModelInferRequest(
        model_name=draw(st.sampled_from(["", "cond", "plain", "nope"])),
        model_version=draw(st.one_of(st.just(""), st.text(max_size=10))),
        id=draw(st.text(max_size=10)))
    raw = draw(st.booleans())
    for _ in range(draw(st.integers(0, 3))):
        tensor = request.inputs.add(name=draw(NAMES), datatype=draw(DATATYPES),
                                    shape=draw(st.lists(st.integers(-3, 400), max_size=3)))
        for key in draw(st.lists(st.text(max_size=8), max_size=2)):
            tensor.parameters[key].CopyFrom(draw(PARAMETER))
        if raw:  # contents of every length, not only whole values
            request.raw_input_contents.append(draw(st.binary(max_size=2500)))
        else:
            tensor.contents.uint64_contents.extend(draw(st.lists(UINT64, max_size=300)))
            tensor.contents.int64_contents.extend(draw(st.lists(
                st.integers(-2**63, 2**63 - 1), max_size=20)))
            tensor.contents.int_contents.extend(draw(st.lists(
                st.integers(-2**31, 2**31 - 1), max_size=20)))
            tensor.contents.fp32_contents.extend(draw(st.lists(  # latents and psi
                st.floats(width=32), max_size=draw(st.sampled_from([1, 20, 300])))))
    if draw(st.booleans()) and request.raw_input_contents:  # a count that does not match
        request.raw_input_contents.append(b"\0" * 8)
    for name in draw(st.lists(NAMES, max_size=3)):
        request.outputs.add(name=name)
    for key in draw(st.lists(PARAMETER_KEYS, max_size=2)):
        request.parameters[key].CopyFrom(draw(PARAMETER))
    return request


@settings(max_examples=200, deadline=None, suppress_health_check=[
    HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(request=infer_requests())
def test_any_model_infer_request_gets_a_status(channel, no_crash_logged, request):
    v2_stub = v2_grpc.GRPCInferenceServiceStub(channel)
    code = _status(lambda: v2_stub.ModelInfer(request, timeout=20))
    assert code in EXPECTED, (code, request)


@settings(max_examples=60, deadline=None)
@given(payload=st.binary(max_size=2000))
def test_malformed_model_infer_frames_are_refused(channel, stub, payload):
    raw = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                              request_serializer=None, response_deserializer=None)
    try:
        raw(payload, timeout=10)
    except grpc.RpcError as err:
        assert err.code() in EXPECTED | {grpc.StatusCode.INTERNAL}, err
    assert stub.Generate(pb.GenerateRequest(seeds=[7]), timeout=10).count == 1
