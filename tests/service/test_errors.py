"""Every bad input gets the right status and a message that says what to fix; the server keeps
serving afterwards."""

from __future__ import annotations

import grpc
import pytest

from service.api.dcgan.v1 import generator_pb2 as pb

INVALID = grpc.StatusCode.INVALID_ARGUMENT

CASES = [
    ("empty seeds", pb.GenerateRequest(), INVALID, "seeds is empty"),
    ("too many seeds", pb.GenerateRequest(seeds=range(257)), INVALID, "at most 256"),
    ("label out of range", pb.GenerateRequest(seeds=[1], labels=[10]), INVALID,
     "out of range: model 'cond' has classes 0..9"),
    ("huge label", pb.GenerateRequest(seeds=[1], labels=[2**32 - 1]), INVALID, "out of range"),
    ("wrong label count", pb.GenerateRequest(seeds=[1, 2, 3], labels=[1, 2]), INVALID,
     "2 labels for 3 seeds"),
    ("labels for an unconditional model",
     pb.GenerateRequest(seeds=[1], labels=[1], model="plain"), INVALID, "not class-conditional"),
    ("unknown model", pb.GenerateRequest(seeds=[1], model="nope"), grpc.StatusCode.NOT_FOUND,
     "no model named 'nope'"),
    ("unknown format", pb.GenerateRequest(seeds=[1], format=99), INVALID, "unknown image format"),
]


@pytest.mark.parametrize("name,request_,code,message", CASES, ids=[c[0] for c in CASES])
def test_bad_generate_requests(stub, name, request_, code, message):
    with pytest.raises(grpc.RpcError) as err:
        stub.Generate(request_, timeout=5)
    assert err.value.code() == code
    assert message in err.value.details()
    assert stub.Generate(pb.GenerateRequest(seeds=[1]), timeout=5).count == 1  # still serving


STREAM_CASES = [
    ("no selection", pb.GenerateStreamRequest(), "set either range or list"),
    ("empty range", pb.GenerateStreamRequest(range=pb.SeedRange(start=5, count=0)),
     "at least 1"),
    ("range past the last seed", pb.GenerateStreamRequest(
        range=pb.SeedRange(start=2**64 - 2, count=5)), "past the largest seed"),
    ("grid", pb.GenerateStreamRequest(range=pb.SeedRange(count=5),
                                      format=pb.IMAGE_FORMAT_PNG_GRID), "PNG grid"),
    ("label count", pb.GenerateStreamRequest(list=pb.SeedList(seeds=[1, 2, 3]), labels=[1, 2]),
     "2 labels for 3 seeds"),
]


@pytest.mark.parametrize("name,request_,message", STREAM_CASES, ids=[c[0] for c in STREAM_CASES])
def test_bad_stream_requests(stub, name, request_, message):
    with pytest.raises(grpc.RpcError) as err:
        list(stub.GenerateStream(request_, timeout=5))
    assert err.value.code() == INVALID and message in err.value.details()


def test_unknown_model_info_is_not_found(stub):
    with pytest.raises(grpc.RpcError) as err:
        stub.GetModelInfo(pb.GetModelInfoRequest(model="nope"), timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_an_expired_deadline_is_reported_as_such(stub):
    with pytest.raises(grpc.RpcError) as err:
        stub.Generate(pb.GenerateRequest(seeds=list(range(256))), timeout=0.000001)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
