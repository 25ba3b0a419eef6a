"""Generate and GenerateStream over a real gRPC channel on 127.0.0.1 with real onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest

from service.api.dcgan.v1 import generator_pb2 as pb
from service.client import GeneratorClient, images_from_response
from service.contract import SEED_RULE
from service.imaging import decode_png


def gen(stub, seeds, **kw):
    return stub.Generate(pb.GenerateRequest(seeds=seeds, **kw), timeout=10)


def test_raw_images_have_the_documented_shape_and_range(stub):
    r = gen(stub, [0, 1, 2, 3])
    assert (r.model, r.format, r.count, r.height, r.width) == ("cond", pb.IMAGE_FORMAT_RAW, 4,
                                                               28, 28)
    assert len(r.raw) == 4 * 28 * 28 and list(r.seeds) == [0, 1, 2, 3]
    images = images_from_response(r)
    assert images.dtype == np.uint8 and images.std() > 0
    assert not np.array_equal(images[0], images[1])  # different seeds, different images
    assert r.model_version.endswith("@30")


def test_same_request_same_bytes(stub):
    a = gen(stub, [5, 99, 2**64 - 1], model="plain")
    b = gen(stub, [5, 99, 2**64 - 1], model="plain")
    assert a.raw == b.raw


def test_a_seeds_image_does_not_depend_on_its_neighbours(stub):
    alone = {s: gen(stub, [s], model="plain").raw for s in (7, 1000, 123456789)}
    together = images_from_response(gen(stub, [3, 7, 42, 1000, 9, 123456789] * 5, model="plain"))
    for s, i in ((7, 1), (1000, 3), (123456789, 5)):
        assert together[i].tobytes() == alone[s]
        assert together[i + 6].tobytes() == alone[s]  # and at another batch position


def test_png_and_grid_decode_to_the_raw_pixels(stub):
    raw = images_from_response(gen(stub, [10, 11, 12, 13, 14]))
    pngs = gen(stub, [10, 11, 12, 13, 14], format=pb.IMAGE_FORMAT_PNG)
    assert len(pngs.png) == 5 and pngs.png[0][:8] == b"\x89PNG\r\n\x1a\n"
    assert np.array_equal(np.stack([decode_png(p) for p in pngs.png]), raw)
    grid = gen(stub, [10, 11, 12, 13, 14], format=pb.IMAGE_FORMAT_PNG_GRID)
    picture = decode_png(grid.grid_png)
    assert grid.grid_columns == 3 and picture.shape == (2 + 2 * 30, 2 + 3 * 30)
    assert np.array_equal(picture[2:30, 2:30], raw[0])
    assert np.array_equal(picture[32:60, 2:30], raw[3])


def test_labels_default_one_for_all_and_per_seed(stub):
    default = gen(stub, [20, 21, 22])
    assert list(default.labels) == [0, 1, 2]  # seed mod 10
    explicit = gen(stub, [20, 21, 22], labels=[0, 1, 2])
    assert explicit.raw == default.raw
    sevens = gen(stub, [20, 21, 22], labels=[7])
    assert list(sevens.labels) == [7, 7, 7] and sevens.raw != default.raw
    mixed = gen(stub, [20, 21, 22], labels=[4, 5, 6])
    assert list(mixed.labels) == [4, 5, 6]


def test_cli_sample_and_generate_give_identical_pixels(stub, tiny_cond_onnx, tmp_path):
    from training.sampling import sample
    seeds = [7, 8, 2**40 + 3]
    written = sample(tiny_cond_onnx, seeds, tmp_path, labels=["3"])
    served = images_from_response(gen(stub, seeds, labels=[3]))
    for path, image in zip(written, served):
        assert np.array_equal(decode_png(path.read_bytes()), image)


def test_stream_a_seed_range_in_chunks(stub):
    responses = list(stub.GenerateStream(pb.GenerateStreamRequest(
        range=pb.SeedRange(start=1000, count=700), chunk_size=256, model="plain"), timeout=30))
    assert [len(r.seeds) for r in responses] == [256, 256, 188]
    seeds = [s for r in responses for s in r.seeds]
    assert seeds == list(range(1000, 1700))
    streamed = np.concatenate([images_from_response(r) for r in responses])
    direct = images_from_response(gen(stub, list(range(1000, 1010)), model="plain"))
    assert np.array_equal(streamed[:10], direct)


def test_stream_a_list_with_per_seed_labels_as_png(stub):
    seeds, labels = [3, 1, 4, 1, 5], [9, 2, 6, 5, 3]
    responses = list(stub.GenerateStream(pb.GenerateStreamRequest(
        list=pb.SeedList(seeds=seeds), labels=labels, chunk_size=2,
        format=pb.IMAGE_FORMAT_PNG), timeout=30))
    assert [list(r.labels) for r in responses] == [[9, 2], [6, 5], [3]]
    assert sum(len(r.png) for r in responses) == 5


def test_stream_chunks_respect_the_message_size_limit():
    from service.plane.dataplane import stream_chunks
    # 64 KiB messages hold at most 80% / (784 + 512) = 40 images, whatever was asked.
    assert stream_chunks(10_000, 0, 1024, 784, 64 << 10) == 40
    assert stream_chunks(10_000, 16, 1024, 784, 64 << 20) == 16
    assert stream_chunks(5, 0, 1024, 784, 64 << 20) == 5


def test_model_listing_and_info(stub):
    models = stub.ListModels(pb.ListModelsRequest(), timeout=5).models
    assert [(m.name, m.is_default) for m in models] == [("cond", True), ("plain", False)]
    cond = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=5)
    assert (cond.name, cond.arch, cond.dataset, cond.latent_dim, cond.num_classes) == (
        "cond", "dcgan", "mnist", 100, 10)
    assert list(cond.class_names) == [str(d) for d in range(10)]
    assert list(cond.execution_providers) == ["CPUExecutionProvider"]
    assert cond.seed_rule == SEED_RULE and cond.max_batch == 256
    assert stub.GetModelInfo(pb.GetModelInfoRequest(model="plain"), timeout=5).num_classes == 0


def test_the_client_library(server):
    with GeneratorClient(f"127.0.0.1:{server.port}") as client:
        images = client.generate([1, 2, 3], labels=[8])
        assert images.shape == (3, 28, 28)
        chunks = list(client.generate_stream(start=0, count=50, chunk_size=20))
        # The README's loop: arrays, as `generate` returns, in seed order.
        assert [len(c) for c in chunks] == [20, 20, 10]
        assert np.array_equal(np.concatenate(chunks), client.generate(list(range(50))))
        responses = list(client.generate_stream_responses(start=0, count=50, chunk_size=20))
        assert sum(r.count for r in responses) == 50
        assert [m.name for m in client.list_models()] == ["cond", "plain"]


@pytest.mark.parametrize("n", [1, 256])
def test_batch_limits_are_inclusive(stub, n):
    assert gen(stub, list(range(n))).count == n


@pytest.mark.parametrize("size", [0, 2])
def test_the_latent_cache_gives_the_contracts_latents_and_stays_bounded(size):
    from service.contract import seeds_to_latents
    from service.plane.dataplane import LatentCache
    cache = LatentCache(size)
    for seeds in ([7], [1, 2, 3], [3, 2**64 - 1], [7], [7, 7]):  # hits, misses, evictions
        got = cache(seeds, 100)
        np.testing.assert_array_equal(got, seeds_to_latents(seeds, 100))
        assert got.dtype == np.float32 and got.flags.c_contiguous
    row = cache([7], 100)
    assert not row.flags.writeable  # a shared cached row cannot be changed by a caller
    kept, hits = cache.stats()
    assert kept == size and (hits > 0) == (size > 0)
