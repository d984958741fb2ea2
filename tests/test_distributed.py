"""Distributed training pieces that need no MPI: a world of one process, DistributedSampler,
SyncBatchNorm's kernels (one process, and two ranks simulated by threads), DDP's buckets.

The runs under ``mpiexec -n 2`` are in test_distributed_mpi.py.
"""
import sys
import threading

import numpy as np
import pytest

import cnnkit
from cnnkit import distributed as dist
from cnnkit import nn
from cnnkit.data import DataLoader, Dataset, DistributedSampler
from cnnkit.functional import norm as norm_kernels
from cnnkit.functional import parallel
from cnnkit.nn import sync_batchnorm as sbn
from cnnkit.nn.parallel import DistributedDataParallel


@pytest.fixture
def world_of_one(monkeypatch):
    for name in dist.process_group.LAUNCHER_SIZE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    dist.init_process_group()
    yield
    dist.destroy_process_group()


# -- process group --------------------------------------------------------------------------------
def test_plain_process_is_a_world_of_one_without_mpi(world_of_one):
    assert dist.is_initialized() and dist.get_rank() == 0 and dist.get_world_size() == 1
    assert "mpi4py.MPI" not in sys.modules  # MPI is never initialised without a launcher
    a = np.arange(4.0)
    dist.all_reduce(a)
    dist.all_reduce(a, op="avg")
    dist.broadcast(a, src=0)
    dist.barrier()
    assert a.tolist() == [0, 1, 2, 3]
    work = dist.all_reduce(a, op="max", async_op=True)
    assert work.is_completed()
    work.wait()
    out = [None]
    dist.all_gather_object(out, {"x": 1})
    assert out == [{"x": 1}]


def test_process_group_life_cycle_errors(world_of_one):
    with pytest.raises(RuntimeError, match="already initialized"):
        dist.init_process_group()
    dist.destroy_process_group()
    assert not dist.is_initialized()
    with pytest.raises(RuntimeError, match="init_process_group"):
        dist.get_rank()
    with pytest.raises(ValueError, match="backend='mpi' only, got 'gloo'"):
        dist.init_process_group("gloo")
    dist.init_process_group()  # the fixture destroys it again


def test_launch_without_mpi4py_says_what_to_install(monkeypatch):
    monkeypatch.setenv("PMI_SIZE", "2")
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import fails as if not installed
    monkeypatch.delitem(sys.modules, "mpi4py.MPI", raising=False)
    with pytest.raises(RuntimeError, match=r"2 processes, but mpi4py is not installed: pip install 'cnnkit\[mpi\]'"):
        dist.init_process_group()
    assert not dist.is_initialized()


@pytest.mark.parametrize("call, error, match", [
    (lambda: dist.all_reduce([1.0, 2.0]), TypeError, "takes a NumPy array"),
    (lambda: dist.all_reduce(nn.Parameter(np.zeros(2))), TypeError, "pass parameter.data or parameter.grad"),
    (lambda: dist.all_reduce(np.zeros((4, 4))[:, 0]), ValueError, "not C-contiguous"),
    (lambda: dist.all_reduce(np.zeros(2), op="mean"), ValueError, "op must be one of sum, avg, max, min, prod, got 'mean'"),
    (lambda: dist.all_reduce(np.zeros(2, np.int64), op="avg"), TypeError, "needs a floating array"),
    (lambda: dist.all_reduce(np.array(["a"])), TypeError, "floating or integer"),
    (lambda: dist.broadcast(np.zeros(2), src=1), ValueError, r"src must be a rank in 0..0, got 1"),
    (lambda: dist.all_gather_object([None, None], 1), ValueError, "length world size 1"),
])
def test_collectives_reject_bad_arguments(world_of_one, call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_read_only_array_is_rejected(world_of_one):
    a = np.zeros(3)
    a.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        dist.all_reduce(a)


def test_thread_count_default_can_be_set_and_the_environment_wins(monkeypatch):
    monkeypatch.delenv("CNNKIT_NUM_THREADS", raising=False)
    try:
        parallel.set_num_threads(1)
        assert parallel.num_threads() == 1
        monkeypatch.setenv("CNNKIT_NUM_THREADS", "3")
        assert parallel.num_threads() == 3
    finally:
        parallel.set_num_threads(None)
    with pytest.raises(ValueError, match="positive int or None, got 0"):
        parallel.set_num_threads(0)


# -- DistributedSampler ---------------------------------------------------------------------------
def shards(n, replicas, **kw):
    return [DistributedSampler(n, replicas, r, **kw).indices() for r in range(replicas)]


@pytest.mark.parametrize("n, replicas", [(12, 3), (10, 4), (7, 2), (1, 3), (0, 2)])
def test_sampler_shards_are_disjoint_and_cover_every_sample(n, replicas):
    parts = shards(n, replicas, seed=5)
    per_rank = -(-n // replicas)
    assert all(len(p) == per_rank for p in parts)  # equal shards: the same number of batches
    counts = np.bincount(np.concatenate(parts), minlength=n) if n else np.zeros(0)
    assert (counts >= 1).all() and counts.sum() == per_rank * replicas
    assert (counts <= 1 + (per_rank * replicas - 1) // max(n, 1)).all()  # padding repeats as few as possible
    if n % replicas == 0:
        assert (counts == 1).all()


def test_sampler_drop_last_and_epochs():
    parts = shards(11, 3, drop_last=True)
    assert [len(p) for p in parts] == [3, 3, 3] and len(np.unique(np.concatenate(parts))) == 9
    sampler = DistributedSampler(100, 2, 1, seed=1)
    first = sampler.indices()
    assert np.array_equal(first, sampler.indices())  # same epoch, same order
    sampler.set_epoch(1)
    assert not np.array_equal(first, sampler.indices())
    assert list(DistributedSampler(6, 2, 1, shuffle=False)) == [1, 3, 5]
    other_seed = DistributedSampler(100, 2, 1, seed=2)
    assert not np.array_equal(first, other_seed.indices())


def test_sampler_defaults_to_the_process_group(world_of_one):
    sampler = DistributedSampler(Dataset(np.zeros((5, 1, 2, 2), np.uint8), np.zeros(5, np.int64), ["a"], "t"))
    assert (sampler.num_replicas, sampler.rank, len(sampler)) == (1, 0, 5)
    assert sorted(sampler) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("kwargs, match", [
    (dict(dataset_or_length=10, num_replicas=0), "num_replicas must be an integer >= 1, got 0"),
    (dict(dataset_or_length=10, num_replicas=2, rank=2), r"rank must be in 0..1 for num_replicas=2, got 2"),
    (dict(dataset_or_length=10, num_replicas=2, rank=-1), "rank must be an integer >= 0"),
    (dict(dataset_or_length=-3, num_replicas=1, rank=0), "dataset length must be an integer >= 0"),
    (dict(dataset_or_length=10, num_replicas=1, rank=0, seed=-1), "seed must be an integer >= 0"),
])
def test_sampler_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DistributedSampler(**kwargs)
    with pytest.raises(TypeError, match="takes a dataset"):
        DistributedSampler(3.5, 1, 0)


def test_dataloader_follows_its_sampler():
    images = np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1)
    data = Dataset(images, np.arange(10) % 3, ["a", "b", "c"], "t")
    sampler = DistributedSampler(data, 2, 1, seed=4)
    loader = DataLoader(data, 2, sampler=sampler)
    assert len(loader) == 3
    seen = np.concatenate([np.round(x[:, 0, 0, 0] * 255).astype(int) for x, _ in loader])
    assert seen.tolist() == sampler.indices().tolist()
    with pytest.raises(ValueError, match="sampler= and shuffle=True exclude each other"):
        DataLoader(data, 2, shuffle=True, sampler=sampler)
    with pytest.raises(ValueError, match="made for 12 samples but the dataset has 10"):
        DataLoader(data, 2, sampler=DistributedSampler(12, 2, 0))
    with pytest.raises(ValueError, match="indices 0..10 for a dataset of 10"):
        list(DataLoader(data, 2, sampler=[0, 10]))


def test_trainer_sets_the_sampler_epoch():
    from cnnkit.train import Trainer

    images = np.random.default_rng(0).integers(0, 255, (8, 1, 4, 4), dtype=np.uint8)
    data = Dataset(images, np.arange(8) % 2, ["a", "b"], "t")
    sampler = DistributedSampler(data, 1, 0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    trainer = Trainer(model, cnnkit.optim.SGD(model.parameters(), lr=0.1), out=None)
    trainer.fit(DataLoader(data, 4, sampler=sampler), epochs=3)
    assert sampler.epoch == 2


# -- SyncBatchNorm --------------------------------------------------------------------------------
@pytest.fixture
def forced_sync(monkeypatch):
    """SyncBatchNorm takes its distributed path in this one process: a 'world' whose sum over the
    ranks is the identity, so it must equal BatchNorm exactly."""
    monkeypatch.setattr(sbn.dist, "world_size_or_one", lambda: 2)
    monkeypatch.setattr(sbn, "_sum_over_ranks", lambda array: None)


def make_bn(cls, channels, rng, dtype=np.float64, **kw):
    layer = cls(channels, dtype=dtype, **kw)
    if layer.affine:
        layer.weight.data[...] = rng.uniform(0.5, 2, channels)
        layer.bias.data[...] = rng.standard_normal(channels)
    return layer


@pytest.mark.parametrize("shape", [(6, 3), (5, 3, 7), (4, 3, 5, 6)])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_sync_path_equals_batchnorm_in_one_process(forced_sync, shape, momentum, rng):
    x = rng.standard_normal(shape) * 2 + 3
    dy = rng.standard_normal(shape)
    bn_cls = nn.BatchNorm1d if len(shape) < 4 else nn.BatchNorm2d
    plain, sync = make_bn(bn_cls, 3, rng, momentum=momentum), make_bn(nn.SyncBatchNorm, 3, rng, momentum=momentum)
    sync.weight.data[...], sync.bias.data[...] = plain.weight.data, plain.bias.data
    for _ in range(2):
        y_plain, y_sync = plain(x), sync(x)
        assert isinstance(sync._cache, sbn.SyncCache)
        np.testing.assert_allclose(y_sync, y_plain, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(sync.backward(dy), plain.backward(dy), rtol=1e-10, atol=1e-12)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        np.testing.assert_allclose(getattr(sync, name), getattr(plain, name), rtol=1e-12)
    np.testing.assert_allclose(sync.weight.grad, plain.weight.grad, rtol=1e-10)
    np.testing.assert_allclose(sync.bias.grad, plain.bias.grad, rtol=1e-10)


def test_sync_path_gradcheck(forced_sync, rng):
    layer = make_bn(nn.SyncBatchNorm, 3, rng)
    assert cnnkit.gradcheck(layer, rng.standard_normal((4, 3, 3, 2)), tol=1e-6) < 1e-6


def test_sync_path_matches_torch(forced_sync, rng):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((4, 3, 5, 5)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    layer = make_bn(nn.SyncBatchNorm, 3, rng, dtype=np.float32)
    ref = torch.nn.BatchNorm2d(3)
    ref.weight.data = torch.tensor(layer.weight.data)
    ref.bias.data = torch.tensor(layer.bias.data)
    xt = torch.tensor(x, requires_grad=True)
    yt = ref(xt)
    yt.backward(torch.tensor(dy))
    np.testing.assert_allclose(layer(x), yt.detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(layer.backward(dy), xt.grad.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(layer.weight.grad, ref.weight.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(layer.running_var, ref.running_var.numpy(), rtol=1e-5)


class ThreadRanks:
    """Ranks simulated by threads: ``all_reduce`` sums the ranks' arrays, in rank order."""

    def __init__(self, world):
        self.world = world
        self.barrier = threading.Barrier(world)
        self.slots = [None] * world
        self.local = threading.local()

    def all_reduce(self, array):
        self.slots[self.local.rank] = array.copy()
        self.barrier.wait()
        total = sum(self.slots[1:], self.slots[0].copy())
        self.barrier.wait()
        array[...] = total

    def run(self, work):
        results, errors = [None] * self.world, []

        def body(rank):
            self.local.rank = rank
            try:
                results[rank] = work(rank)
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)
                self.barrier.abort()

        threads = [threading.Thread(target=body, args=(r,)) for r in range(self.world)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not errors, errors
        return results


@pytest.mark.parametrize("sizes, shape", [((4, 4), (3, 5, 6)), ((3, 5), (3, 4, 4)), ((1, 2, 4), (3,)), ((0, 5), (3, 4, 4))])
def test_sync_kernels_over_threads_equal_one_batchnorm_on_the_whole_batch(sizes, shape, rng):
    """Uneven shards too (a last batch can be, even an empty one): the statistics weigh every sample once."""
    world = len(sizes)
    x = rng.standard_normal((sum(sizes),) + shape) * 3 + 1
    dy = rng.standard_normal(x.shape)
    weight, bias = rng.uniform(0.5, 2, 3), rng.standard_normal(3)
    run_mean, run_var = np.zeros(3), np.ones(3)
    y_ref, cache = norm_kernels.batch_norm_forward(x, weight, bias, run_mean, run_var, True, 0.1, 1e-5)
    dx_ref, dw_ref, db_ref = norm_kernels.batch_norm_backward(dy, cache)
    bounds = np.cumsum((0,) + sizes)
    ranks = ThreadRanks(world)

    def rank_work(rank):
        part = slice(bounds[rank], bounds[rank + 1])
        rm, rv = np.zeros(3), np.ones(3)
        y, c = sbn.sync_batch_norm_forward(x[part], weight, bias, rm, rv, 0.1, 1e-5, ranks.all_reduce)
        return y, rm, rv, sbn.sync_batch_norm_backward(dy[part], c, ranks.all_reduce)

    results = ranks.run(rank_work)
    np.testing.assert_allclose(np.concatenate([r[0] for r in results]), y_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.concatenate([r[3][0] for r in results]), dx_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(sum(r[3][1] for r in results), dw_ref, rtol=1e-10)
    np.testing.assert_allclose(sum(r[3][2] for r in results), db_ref, rtol=1e-10)
    for r in results:
        np.testing.assert_allclose(r[1], run_mean, rtol=1e-12)
        np.testing.assert_allclose(r[2], run_var, rtol=1e-12)


def test_sync_batchnorm_is_batchnorm_in_a_world_of_one(rng):
    x = rng.standard_normal((4, 3, 5, 5)).astype(np.float32)
    plain, sync = nn.BatchNorm2d(3), nn.SyncBatchNorm(3)
    np.testing.assert_array_equal(sync(x), plain(x))
    assert not isinstance(sync._cache, sbn.SyncCache)
    np.testing.assert_array_equal(sync.backward(x), plain.backward(x))
    assert list(sync.state_dict()) == list(plain.state_dict())


def test_sync_batchnorm_rejects_what_batchnorm_rejects(forced_sync):
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        nn.SyncBatchNorm(3, dtype=np.float64)(np.ones((1, 3)))
    with pytest.raises(ValueError, match="expects a"):
        nn.SyncBatchNorm(3)(np.ones(3, np.float32))


def test_convert_sync_batchnorm_shares_parameters_and_buffers(rng):
    model = cnnkit.models.create("resnet20")
    model.layer1[0].bn1.eval_locked = True
    before = model.state_dict()
    bn = model.layer1[0].bn1
    opt = cnnkit.optim.SGD(model.parameters(), lr=0.1)
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert converted is model
    kinds = [type(m) for m in model.modules()]
    assert nn.SyncBatchNorm in kinds and nn.BatchNorm2d not in kinds
    new = model.layer1[0].bn1
    assert new.weight is bn.weight and new.running_mean is bn.running_mean and new.eval_locked
    assert list(model.state_dict()) == list(before)
    assert all(a is b for a, b in zip(model.state_dict().values(), before.values()))
    assert opt.param_groups[0]["params"][1] is model.bn1.weight  # the optimizer still updates the model
    single = nn.BatchNorm1d(4)
    assert isinstance(nn.SyncBatchNorm.convert_sync_batchnorm(single), nn.SyncBatchNorm)


# -- DistributedDataParallel in one process -------------------------------------------------------
def small_net(seed=0):
    g = np.random.default_rng(seed)
    return nn.Sequential(nn.Conv2d(2, 3, 3, generator=g), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 4, generator=g),
                         nn.ReLU(), nn.Linear(4, 2, generator=g))


def test_ddp_in_a_world_of_one_is_the_module(world_of_one, rng):
    x = rng.standard_normal((3, 2, 6, 6)).astype(np.float32)
    plain, wrapped = small_net(), small_net()
    ddp = DistributedDataParallel(wrapped)
    np.testing.assert_array_equal(ddp(x), plain(x))
    np.testing.assert_array_equal(ddp.backward(np.ones((3, 2), np.float32)), plain.backward(np.ones((3, 2), np.float32)))
    for p, q in zip(wrapped.parameters(), plain.parameters()):
        np.testing.assert_array_equal(p.grad, q.grad)
    assert list(ddp.state_dict())[0] == "module.0.weight"  # PyTorch's keys
    assert ddp.output_shape((2, 6, 6)) == (2,)
    with ddp.no_sync():
        assert not ddp.require_backward_grad_sync
    assert ddp.require_backward_grad_sync


def test_ddp_needs_a_process_group_and_a_module():
    with pytest.raises(RuntimeError, match="init_process_group"):
        DistributedDataParallel(small_net())


def test_ddp_rejects_bad_arguments(world_of_one):
    with pytest.raises(TypeError, match="wraps a cnnkit Module, got list"):
        DistributedDataParallel([])
    with pytest.raises(ValueError, match="bucket_cap_mb must be a positive number, got 0"):
        DistributedDataParallel(small_net(), bucket_cap_mb=0)


def test_buckets_follow_backward_order_skip_frozen_and_start_small(world_of_one):
    model = small_net()
    model[0].weight.requires_grad = False
    ddp = DistributedDataParallel(model, bucket_cap_mb=1e-4)  # ~105 bytes: a few parameters per bucket
    order = [p for b in ddp._buckets for p in b.params]
    assert order == [model[5].bias, model[5].weight, model[3].bias, model[3].weight, model[0].bias]
    assert sum(ddp.bucket_sizes) == sum(p.size for p in model.parameters() if p.requires_grad)
    one = DistributedDataParallel(small_net())
    assert len(one.bucket_sizes) == 1  # 200 values: all in the first (1 MB) bucket


class Recorder(nn.Module):
    """Wraps a layer and logs when its backward finishes."""

    def __init__(self, inner, log, name):
        super().__init__()
        self.inner, self.log, self.name = inner, log, name

    def forward(self, x):
        return self.inner(x)

    def backward(self, dy, input_grad=True):
        dx = self.inner.backward(dy, input_grad=input_grad)
        self.log.append(f"backward {self.name}")
        return dx


def test_buckets_start_during_backward_in_order_and_are_averaged(world_of_one, monkeypatch, rng):
    """Two ranks pretended: the reductions are logged (each sums this one rank), the average halves."""
    from cnnkit.nn import parallel as ddp_module

    log = []
    g = np.random.default_rng(0)
    layers = [nn.Linear(5, 6, generator=g), nn.ReLU(), nn.Linear(6, 4, generator=g), nn.ReLU(), nn.Linear(4, 3, generator=g)]
    model = nn.Sequential(*[Recorder(m, log, str(i)) for i, m in enumerate(layers)]).double()
    ddp = DistributedDataParallel(model, bucket_cap_mb=1e-4)  # ~104 bytes: one or two per bucket
    real_all_reduce = ddp_module.dist.all_reduce

    def logged(array, op="sum", async_op=False):
        log.append(f"allreduce {array.size}")
        return real_all_reduce(array, op=op, async_op=async_op)

    monkeypatch.setattr(ddp_module.dist, "all_reduce", logged)
    monkeypatch.setattr(ddp_module.dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(ddp, "_world", 2)
    x = rng.standard_normal((7, 5))
    started = 0
    for step in range(2):  # the first backward also teaches DDP the order gradients arrive in
        log.clear()
        sizes = [b.total + len(b.params) for b in ddp._buckets]
        first_bucket = ddp._buckets[0].params
        ddp.zero_grad()
        ddp(x)
        ddp.backward(np.ones((7, 3)), input_grad=False)
        assert len(sizes) > 2
        started += len(sizes)
        assert [e for e in log if e.startswith("allreduce")] == [f"allreduce {s}" for s in sizes]
        # the first bucket (the last layer's) is on its way before the layers below ran their backward
        assert log.index(f"allreduce {sizes[0]}") < log.index("backward 2") < log.index(f"allreduce {sizes[-1]}")
    assert first_bucket[0] is layers[4].weight  # learned: Linear writes weight, then bias
    assert ddp.comm_stats["backwards"] == 2 and ddp.comm_stats["buckets_started_in_backward"] == started

    averaged = [p.grad.copy() for p in model.parameters()]
    model.zero_grad()
    model(x)
    model.backward(np.ones((7, 3)), input_grad=False)  # without DDP: this rank's own gradients
    for mean, p in zip(averaged, model.parameters()):
        np.testing.assert_allclose(mean, p.grad / 2, rtol=1e-12)


def test_parameter_on_grad_is_called_after_each_write():
    p = nn.Parameter(np.zeros(3))
    calls = []
    p.on_grad = lambda param: calls.append(param.grad.copy())
    p.accumulate_grad(np.ones(3))
    p.accumulate_grad(np.ones(3))
    assert [c.tolist() for c in calls] == [[1, 1, 1], [2, 2, 2]]
    p.requires_grad = False
    p.accumulate_grad(np.ones(3))
    assert len(calls) == 2
