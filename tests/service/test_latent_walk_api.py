"""Interpolation, truncation and explicit latents through every API, exact against Generate
and against `dcgan-train sample` (the same contract rule, the same runner)."""

from __future__ import annotations

import io
import json
import urllib.request

import grpc
import numpy as np
import pytest
from PIL import Image

from service.api.dcgan.v1 import generator_pb2 as pb
from service.api.inference import grpc_predict_v2_pb2 as v2
from service.api.inference import grpc_predict_v2_pb2_grpc as v2_grpc
from service.client import GeneratorClient, images_from_response
from service.contract import LATENT_RULE, interpolate, seed_to_latent, truncate
from service.imaging import decode_png, make_grid


def _generate(stub, **fields) -> np.ndarray:
    return images_from_response(stub.Generate(pb.GenerateRequest(**fields), timeout=20))


def _interpolate(stub, **fields) -> pb.GenerateResponse:
    return stub.Interpolate(pb.InterpolateRequest(**fields), timeout=20)


def test_interpolation_ends_are_generate_and_frames_are_their_latents_images(stub):
    response = _interpolate(stub, model="cond", seed_a=3, seed_b=13, frames=7)
    frames = images_from_response(response)
    assert frames.shape == (7, 28, 28) and response.latent_rule == LATENT_RULE
    assert list(response.labels) == [3] * 7 and not response.seeds
    ends = _generate(stub, model="cond", seeds=[3, 13])
    assert frames[0].tobytes() == ends[0].tobytes() and frames[-1].tobytes() == ends[1].tobytes()
    # Every frame is the image of its latent under the contract's rule, whichever other
    # latents share the request: the same bytes sent as explicit latents, in two halves.
    path = interpolate(seed_to_latent(3, 100), seed_to_latent(13, 100), 7)
    halves = np.concatenate([_generate(stub, model="cond", latents=part.tobytes(), labels=[3])
                             for part in (path[:3], path[3:])])
    assert halves.tobytes() == frames.tobytes()
    lerp = images_from_response(_interpolate(stub, model="cond", seed_a=3, seed_b=13, frames=7,
                                             method=pb.INTERPOLATION_LERP))
    assert lerp[0].tobytes() == frames[0].tobytes() and lerp[3].tobytes() != frames[3].tobytes()


def test_psi_one_is_today_and_psi_below_one_is_the_truncated_latents(stub):
    plain = _generate(stub, model="plain", seeds=[4, 5, 6])
    assert _generate(stub, model="plain", seeds=[4, 5, 6], psi=1.0).tobytes() == plain.tobytes()
    response = stub.Generate(pb.GenerateRequest(model="plain", seeds=[4, 5, 6], psi=0.5))
    assert response.latent_rule == LATENT_RULE and response.psi == pytest.approx(0.5)
    by_latents = truncate(np.stack([seed_to_latent(s, 100) for s in (4, 5, 6)]), 0.5)
    assert images_from_response(response).tobytes() == _generate(
        stub, model="plain", latents=by_latents.tobytes()).tobytes()
    assert images_from_response(response).tobytes() != plain.tobytes()
    assert stub.Generate(pb.GenerateRequest(model="plain", seeds=[4])).latent_rule == ""


def test_explicit_latents_give_the_seeds_images(stub):
    latents = np.stack([seed_to_latent(s, 100) for s in (7, 8)])
    assert _generate(stub, model="plain", latents=latents.tobytes()).tobytes() == \
        _generate(stub, model="plain", seeds=[7, 8]).tobytes()


def test_the_cli_and_the_service_give_the_same_interpolation(stub, tiny_cond_onnx, tmp_path):
    from training.sampling import interpolation
    written = interpolation(tiny_cond_onnx, 2, 12, 5, tmp_path, method="lerp", psi=0.8)
    cli = np.stack([decode_png(p.read_bytes()) for p in written[:5]])
    served = images_from_response(_interpolate(stub, model="cond", seed_a=2, seed_b=12,
                                               frames=5, method=pb.INTERPOLATION_LERP, psi=0.8))
    assert cli.tobytes() == served.tobytes()


BAD = [  # rpc, fields, what the message says
    ("Generate", dict(model="plain", seeds=[1], psi=1.5), "psi 1.5 is outside (0, 1]"),
    ("Generate", dict(model="plain", seeds=[1], psi=-0.2), "outside (0, 1]"),
    ("Generate", dict(model="plain", latents=b"\0" * 12), "whole number of float32 vectors"),
    ("Generate", dict(model="plain", latents=np.full((1, 100), np.nan, "<f4").tobytes()),
     "NaN or infinite"),
    ("Generate", dict(model="plain", latents=np.zeros((300, 100), "<f4").tobytes()),
     "at most 256"),
    ("Generate", dict(model="plain", seeds=[1], latents=np.zeros((1, 100), "<f4").tobytes()),
     "seeds or latents, not both"),
    ("Generate", dict(model="cond", latents=np.zeros((1, 100), "<f4").tobytes()),
     "send one label for all latents"),
    ("Interpolate", dict(model="cond", seed_a=3, seed_b=14, frames=4),
     "takes one class, not a mix of two"),
    ("Interpolate", dict(model="cond", seed_a=3, seed_b=14, frames=4, labels=[1, 2]),
     "send none or one"),
    ("Interpolate", dict(model="plain", seed_a=3, seed_b=14, frames=4, labels=[1]),
     "not class-conditional"),
    ("Interpolate", dict(model="plain", seed_a=3, seed_b=4, frames=1), "ask for 2 to 256"),
    ("Interpolate", dict(model="plain", seed_a=3, seed_b=4, frames=9999), "ask for 2 to 256"),
    ("Interpolate", dict(model="plain", seed_a=3, seed_b=4, frames=4, method=7),
     "unknown interpolation 7"),
]


@pytest.mark.parametrize("rpc,fields,message", BAD, ids=[m for *_, m in BAD])
def test_bad_walks_are_invalid_argument_with_a_message(stub, rpc, fields, message):
    request = (pb.GenerateRequest if rpc == "Generate" else pb.InterpolateRequest)(**fields)
    with pytest.raises(grpc.RpcError) as err:
        getattr(stub, rpc)(request, timeout=20)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in err.value.details(), err.value.details()


def test_images_are_counted_by_kind(server, stub):
    def count(kind):
        return server.metrics.registry.get_sample_value(
            "dcgan_images_generated_total",
            {"model": "plain", "version": server.registry.get("plain").version,
             "kind": kind}) or 0
    before = {k: count(k) for k in ("seed", "interpolation", "latent")}
    _generate(stub, model="plain", seeds=[1, 2])
    _interpolate(stub, model="plain", seed_a=1, seed_b=2, frames=5)
    _generate(stub, model="plain", latents=np.zeros((3, 100), "<f4").tobytes())
    assert {k: count(k) - v for k, v in before.items()} == {
        "seed": 2, "interpolation": 5, "latent": 3}


def test_the_client_and_dcgan_client_interpolate(server, stub, tmp_path):
    from service.client import main
    with GeneratorClient(f"127.0.0.1:{server.port}") as client:
        frames = client.interpolate(1, 11, 6, labels=[4], model="cond", psi=0.9)
        latents = np.stack([seed_to_latent(s, 100) for s in (5, 6)])
        assert client.generate(latents=latents, model="plain").tobytes() == \
            _generate(stub, model="plain", seeds=[5, 6]).tobytes()
    assert frames.shape == (6, 28, 28)
    out = tmp_path / "walk"
    assert main(["--address", f"127.0.0.1:{server.port}", "interpolate", "1", "11", "--frames",
                 "6", "--label", "4", "--model", "cond", "--psi", "0.9", "--out",
                 str(out)]) == 0
    assert decode_png((out / "frame_005.png").read_bytes()).tobytes() == frames[5].tobytes()
    gif = Image.open(out / "interpolation.gif")
    assert gif.n_frames == 6


# --- the Open Inference Protocol, gRPC and REST ------------------------------------------------

def _v2_request(model="plain", **tensors) -> v2.ModelInferRequest:
    request = v2.ModelInferRequest(model_name=model)
    for name, (datatype, array) in tensors.items():
        request.inputs.add(name=name, datatype=datatype, shape=list(array.shape))
        request.raw_input_contents.append(array.tobytes())
    return request


def test_v2_takes_latents_psi_and_frames_and_describes_them(channel, stub):
    v2_stub = v2_grpc.GRPCInferenceServiceStub(channel)
    meta = v2_stub.ModelMetadata(v2.ModelMetadataRequest(name="plain"))
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs][1:] == [
        ("latents", "FP32", [-1, 100]), ("psi", "FP32", [1]), ("frames", "INT64", [1])]

    def images(response):
        return np.frombuffer(response.raw_output_contents[0], np.uint8).reshape(-1, 28, 28)

    latents = np.stack([seed_to_latent(s, 100) for s in (7, 8)]).astype("<f4")
    got = images(v2_stub.ModelInfer(_v2_request(latents=("FP32", latents))))
    assert got.tobytes() == _generate(stub, model="plain", seeds=[7, 8]).tobytes()
    got = images(v2_stub.ModelInfer(_v2_request(seeds=("UINT64", np.array([7, 8], "<u8")),
                                                psi=("FP32", np.array([0.6], "<f4")))))
    assert got.tobytes() == _generate(stub, model="plain", seeds=[7, 8], psi=0.6).tobytes()
    request = _v2_request(seeds=("UINT64", np.array([3, 9], "<u8")),
                          frames=("INT64", np.array([5], "<i8")))
    request.parameters["interpolation"].string_param = "lerp"
    walk = images_from_response(_interpolate(stub, model="plain", seed_a=3, seed_b=9, frames=5,
                                             method=pb.INTERPOLATION_LERP))
    assert images(v2_stub.ModelInfer(request)).tobytes() == walk.tobytes()
    with pytest.raises(grpc.RpcError) as err:
        v2_stub.ModelInfer(_v2_request(latents=("FP32", np.full((1, 100), np.inf, "<f4")))),
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "NaN or infinite" in err.value.details()


def _get(url: str) -> tuple[int, dict, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=20) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def test_http_interpolation_strip_gif_psi_and_latents(server, stub):
    base = f"http://127.0.0.1:{server.http_port}"
    walk = images_from_response(_interpolate(stub, model="cond", seed_a=3, seed_b=13, frames=6,
                                             labels=[5], psi=0.7))
    status, headers, png = _get(base + "/v1/models/cond/interpolation.png?a=3&b=13&frames=6"
                                       "&label=5&psi=0.7")
    assert status == 200 and headers["ETag"]
    assert decode_png(png).tobytes() == make_grid(walk[:, None], ncols=6).tobytes()
    status, headers, gif = _get(base + "/v1/models/cond/interpolation.gif?a=3&b=13&frames=6"
                                       "&label=5&psi=0.7")
    assert status == 200 and headers["Content-Type"] == "image/gif"
    animation = Image.open(io.BytesIO(gif))
    assert animation.n_frames == 6
    for i in range(6):
        animation.seek(i)
        assert np.asarray(animation.convert("L")).tobytes() == walk[i].tobytes()
    # A walk of N frames is a GIF of N frames, identical neighbours included (from a seed to
    # itself every frame is the same picture).
    _, _, same = _get(base + "/v1/models/cond/interpolation.gif?a=5&b=5&frames=3")
    assert Image.open(io.BytesIO(same)).n_frames == 3
    status, one, grid = _get(base + "/v1/models/plain/grid.png?seeds=0-3&psi=0.5")
    assert decode_png(grid).tobytes() == make_grid(
        _generate(stub, model="plain", seeds=[0, 1, 2, 3], psi=0.5)[:, None]).tobytes()
    assert one["ETag"] != _get(base + "/v1/models/plain/grid.png?seeds=0-3")[1]["ETag"]
    for query, message in (("a=3&b=14&frames=4", b"not a mix of two"),
                           ("a=3&frames=4", b"?b= is missing"),
                           ("a=3&b=13&psi=2", b"outside (0, 1]"),
                           ("a=3&b=13&method=cubic", b"slerp or lerp")):
        status, _, body = _get(base + f"/v1/models/cond/interpolation.png?{query}")
        assert status == 400 and message in body, (query, body)
    body = json.dumps({"inputs": [{"name": "latents", "datatype": "FP32", "shape": [1, 100],
                                   "data": seed_to_latent(9, 100).tolist()}]}).encode()
    request = urllib.request.Request(base + "/v2/models/plain/infer", data=body,
                                      headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=20) as response:
        [images] = json.loads(response.read())["outputs"]
    assert bytes(images["data"]) == _generate(stub, model="plain", seeds=[9]).tobytes()


def test_responses_record_the_rule_on_every_api(server, stub, channel):
    streamed = list(stub.GenerateStream(pb.GenerateStreamRequest(
        model="plain", range=pb.SeedRange(start=0, count=6), chunk_size=4, psi=0.7), timeout=20))
    assert all(r.latent_rule == LATENT_RULE for r in streamed)
    assert np.concatenate([images_from_response(r) for r in streamed]).tobytes() == \
        _generate(stub, model="plain", seeds=list(range(6)), psi=0.7).tobytes()
    v2_stub = v2_grpc.GRPCInferenceServiceStub(channel)
    response = v2_stub.ModelInfer(_v2_request(seeds=("UINT64", np.array([1], "<u8")),
                                              psi=("FP32", np.array([0.5], "<f4"))))
    assert response.parameters["latent_rule"].string_param == LATENT_RULE
    assert response.parameters["psi"].string_param == "0.5"
    assert "latent_rule" not in v2_stub.ModelInfer(_v2_request(
        seeds=("UINT64", np.array([1], "<u8")))).parameters
    _, headers, _ = _get(f"http://127.0.0.1:{server.http_port}/v1/models/plain/grid.png"
                         "?seeds=1-2&psi=0.5")
    assert headers["Latent-Rule"] == LATENT_RULE


from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.one_of(
    st.binary(max_size=2000),
    st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=100,
             max_size=800).map(lambda v: np.array(v[:len(v) // 100 * 100], "<f4").tobytes())),
    psi=st.one_of(st.just(0.0), st.floats(-2, 2, width=32)))
def test_any_latents_and_psi_get_images_or_a_clear_refusal(stub, data, psi):
    request = pb.GenerateRequest(model="plain", latents=data, psi=psi)
    array = np.frombuffer(data[:len(data) // 400 * 400], "<f4")
    valid = (data and len(data) % 400 == 0 and np.isfinite(array).all()
             and 0 < psi <= 1)  # psi is `optional`: a 0 sent is refused, not read as unset
    try:
        response = stub.Generate(request, timeout=20)
    except grpc.RpcError as err:
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and err.details()
        assert not valid, err.details()
        return
    assert valid and response.count == len(data) // 400


def test_psi_zero_is_refused_at_every_door_and_unset_is_one(server, stub, channel):
    """proto3 could not tell 0 from unset, so gRPC took psi 0 as 1; `optional` tells them
    apart: 0 is refused as HTTP and V2 refuse it, and an unset psi is no truncation."""
    import urllib.error
    for request in (pb.GenerateRequest(seeds=[1], psi=0),
                    pb.InterpolateRequest(seed_a=1, seed_b=11, frames=3, psi=0)):
        call = stub.Generate if isinstance(request, pb.GenerateRequest) else stub.Interpolate
        with pytest.raises(grpc.RpcError) as err:
            call(request, timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "psi 0.0 is outside (0, 1]" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        list(stub.GenerateStream(pb.GenerateStreamRequest(range=pb.SeedRange(count=3), psi=0),
                                 timeout=10))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with GeneratorClient(f"127.0.0.1:{server.port}") as client:
        with pytest.raises(grpc.RpcError):
            client.generate([1], psi=0)
        assert np.array_equal(client.generate([1, 2]), client.generate([1, 2], psi=1.0))
    unset = stub.Generate(pb.GenerateRequest(seeds=[1, 2]), timeout=10)
    assert unset.psi == 1.0 and unset.latent_rule == ""
    url = f"http://127.0.0.1:{server.http_port}/v1/models/cond/grid.png?seeds=0-3&psi=0"
    with pytest.raises(urllib.error.HTTPError) as http_err:
        urllib.request.urlopen(url, timeout=10)
    assert http_err.value.code == 400
    assert "psi '0' is outside (0, 1]" in json.loads(http_err.value.read())["error"]
