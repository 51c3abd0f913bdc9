"""Reused activation buffers (sgcnn.deploy._arena): exact on every call, never handed to the
caller, per thread, and dropped by copies and release()."""

import copy
import gc
import pickle
import threading
import weakref

import pytest
import torch
import torchvision
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef

import sgcnn
from sgcnn.core.clustering import KMeansSettings
from sgcnn.deploy import _arena, _native, release_buffers

pytestmark = pytest.mark.skipif(not _native.available(), reason="native kernel unavailable")


def _grouped(model, size):
    sgcnn.self_group_(
        model.eval(), 0.5, groups=4, kmeans=KMeansSettings(n_init=1, max_iter=30),
        input_size=(3, size, size),
    )  # fmt: skip
    return model


def _arenas(model):
    return {id(a): a for m in model.modules() if (a := _arena._arena_of(m)) is not None}


@torch.no_grad()
def test_resnet18_exact_on_new_inputs_and_batches_with_buffers_reused():
    model = _grouped(torchvision.models.resnet18(), 64)
    converted = sgcnn.convert(model, torch.randn(2, 3, 64, 64), tune=False, progress=False)
    (arena,) = _arenas(converted).values()
    assert 0 < arena.slots < 10  # slots shared between layers, not one per layer
    outputs = []
    for batch in (3, 1, 3):
        x = torch.randn(batch, 3, 64, 64)
        y = converted(x)
        torch.testing.assert_close(y, model(x), rtol=1e-4, atol=1e-4)
        outputs.append((y, y.clone()))
    for y, kept in outputs:  # what the caller holds is never overwritten by a later call
        assert torch.equal(y, kept)
    held = arena.nbytes()
    assert held > 0
    assert release_buffers(converted) == held
    assert arena.nbytes() == 0
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(converted(x), model(x), rtol=1e-4, atol=1e-4)


class _Features(nn.Module):
    """Returns an intermediate map (directly and through a view) next to the logits."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.b = nn.Conv2d(16, 16, 3, padding=1)
        self.c = nn.Conv2d(16, 16, 1)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(16 * 8 * 8, 10)

    def forward(self, x):
        a = torch.relu(self.a(x))
        b = self.pool(torch.relu(self.b(a)))
        c = self.c(b)
        return self.fc(c.flatten(1)), {"a": a, "c_rows": c[:, :4]}


@torch.no_grad()
def test_outputs_and_their_views_never_live_in_the_arena():
    model = _grouped(_Features(), 16)
    converted = sgcnn.convert(model, torch.randn(2, 3, 16, 16), tune=False, progress=False)
    first = converted(torch.randn(2, 3, 16, 16))
    kept = copy.deepcopy(first)
    x = torch.randn(2, 3, 16, 16)
    second = converted(x)
    torch.testing.assert_close(first, kept, rtol=0, atol=0)
    reference = model(x)
    torch.testing.assert_close(second[0], reference[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(second[1]["a"], reference[1]["a"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(second[1]["c_rows"], reference[1]["c_rows"], rtol=1e-4, atol=1e-4)


@torch.no_grad()
def test_threads_copies_and_pickles_get_their_own_buffers():
    model = _grouped(sgcnn.create_model("resnet20"), 16)
    converted = sgcnn.convert(model, torch.randn(2, 3, 16, 16), tune=False, progress=False)
    errors = []

    def work(seed):
        g = torch.Generator().manual_seed(seed)
        for _ in range(4):
            x = torch.randn(2, 3, 16, 16, generator=g)
            errors.append(float((converted(x) - model(x)).abs().max()))

    threads = [threading.Thread(target=work, args=(s,)) for s in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 12 and max(errors) < 1e-4
    (arena,) = _arenas(converted).values()
    for clone in (copy.deepcopy(converted), pickle.loads(pickle.dumps(converted))):
        (other,) = _arenas(clone).values()  # one arena per model, shared by its layers
        assert other is not arena and other.slots == arena.slots and other.nbytes() == 0
        x = torch.randn(1, 3, 16, 16)
        torch.testing.assert_close(clone(x), model(x), rtol=1e-4, atol=1e-4)


def test_buffers_made_in_inference_mode_serve_later_calls_outside_it():
    model = _grouped(torchvision.models.resnet18(), 32)
    x = torch.randn(2, 3, 32, 32)
    converted = sgcnn.convert(model, x, tune=False, progress=False)
    for m in converted.modules():  # the 1x1 shortcut projections through the out= matmul path
        if type(m).__name__ == "DenseConv2d" and m.kernel_size == (1, 1):
            m.mode = "matmul"
    _arena.plan(converted)
    assert any(
        type(m).__name__ == "DenseConv2d" and getattr(m, "arena_slot", None)
        for m in converted.modules()
    )
    with torch.no_grad():
        reference = model(x)
    with torch.inference_mode():
        first = converted(x)
    with torch.no_grad():
        second = converted(x)
    torch.testing.assert_close(first, reference, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(second, reference, rtol=1e-4, atol=1e-4)


def test_no_buffer_where_autograd_records_the_call():
    from sgcnn.deploy import fast

    conv = nn.Conv2d(8, 16, 1).eval()
    layer = fast.DenseConv2d(fast.spec_from_layer(conv), mode="matmul")
    layer.arena_slot = (_arena.Arena(1), 0)
    x = torch.randn(2, 8, 5, 5, requires_grad=True)
    y = layer(x)  # out= would raise: autograd cannot differentiate it
    assert y.requires_grad and layer.arena_slot[0].nbytes() == 0
    y.sum().backward()
    torch.testing.assert_close(x.grad, conv.weight.sum(0).view(1, 8, 1, 1).expand(2, 8, 5, 5))
    with torch.no_grad():
        torch.testing.assert_close(layer(x), conv(x), rtol=1e-5, atol=1e-5)
    assert layer.arena_slot[0].nbytes() > 0


def _weak_refs(arena):
    """Weak references to the storages of the calling thread's buffers of ``arena``."""
    held = getattr(arena._local, "buffers", None) or []
    return [StorageWeakRef(b.untyped_storage()) for b in held if b is not None]


def test_a_finished_threads_buffers_are_freed():
    """A server with a thread per request must not keep a set of buffers per thread id."""
    arena = _arena.Arena(2)
    mine = arena.take(0, 100, torch.float32)
    refs = []

    def work():
        arena.take(1, 1000, torch.float32)
        refs.extend(_weak_refs(arena))

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    del thread
    gc.collect()
    assert arena.nbytes() == mine.numel() * 4  # the running thread's buffer stays
    assert len(refs) == 1 and refs[0].expired()


def _recording_arena(made: list):
    """An Arena class that notes weak references to itself and to every buffer it hands out."""

    class Recorded(_arena.Arena):
        def buffer(self, slot, numel, dtype, device):
            buf = super().buffer(slot, numel, dtype, device)
            made.append((weakref.ref(self), StorageWeakRef(buf.untyped_storage())))
            return buf

    return Recorded


@torch.no_grad()
def test_release_and_conversion_free_the_buffers_native_layers_keep_views_of(monkeypatch):
    """A native layer's call plan keeps its last output, a view of its arena buffer: tuning's
    buffers are gone once convert returns, and the model's once release_buffers returns."""
    made = []
    monkeypatch.setattr(_arena, "Arena", _recording_arena(made))
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )  # fmt: skip
    _grouped(model, 8)
    x = torch.randn(2, 3, 8, 8)
    converted = sgcnn.convert(model, x, tune=True, realizations=("native",), progress=False)
    (arena,) = _arenas(converted).values()
    gc.collect()
    tuned = [ref for owner, ref in made if owner() is not arena]
    assert tuned and all(ref.expired() for ref in tuned)
    converted(x)
    refs = _weak_refs(arena)
    assert refs and release_buffers(converted) > 0
    gc.collect()
    assert all(ref.expired() for ref in refs)
    torch.testing.assert_close(converted(x), model(x), rtol=1e-4, atol=1e-4)
