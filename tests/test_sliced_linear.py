"""torch.ops.inductor_fuse.sliced_linear: x @ w^T as one bmm over slices of w's rows, equal to the
one mm (which the dequant_cpu rule emits for every other linear) up to float32 rounding: MKL may
sum a row's K products in another order in the batched call (measured: 5e-7 of the output's
largest value with 2 threads and 4 rows on a 2-core Xeon; bit-identical on one thread)."""

import pytest
import torch

import inductor_fuse  # noqa: F401 -- defines the op
from inductor_fuse.sliced_linear import sliced_linear


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


@pytest.mark.parametrize("n_threads", [1, 2, 3])
@pytest.mark.parametrize("M", [1, 2, 4])
@pytest.mark.parametrize(("N", "slices"), [(64, 1), (128, 2), (64 * 7, 7), (64 * 40, 8), (32000, 5), (151936, 2)])
def test_bit_identical_to_mm(threads, n_threads, M, N, slices):
    torch.manual_seed(0)
    x, w = torch.randn(M, 640), torch.randn(N, 640)
    threads(n_threads)
    y = torch.ops.inductor_fuse.sliced_linear(x, w, slices)
    ref = torch.mm(x, w.t())
    assert y.shape == (M, N)
    # a sum of 640 float32 products in another order: a few ulps of the largest output
    assert (y - ref).abs().max() <= 2e-6 * ref.abs().max(), (y - ref).abs().max()
    if n_threads == 1:
        assert torch.equal(y, ref)  # one thread: the same order (measured; the bound above is the claim)


def test_a_stride_zero_row_as_inductor_passes_it():
    x, w = torch.randn(1, 256), torch.randn(1024, 256)
    assert torch.equal(sliced_linear(x.as_strided((1, 256), (0, 1)), w, 4), torch.mm(x, w.t()))


def test_fake_and_validation():
    with torch._subclasses.FakeTensorMode():
        y = sliced_linear(torch.empty(3, 64), torch.empty(128, 64), 2)
    assert y.shape == (3, 128) and y.dtype == torch.float32
    with pytest.raises(ValueError, match=r"x \[M, K\] and w \[N, K\]"):
        sliced_linear(torch.randn(2, 64), torch.randn(10, 32), 1)
    with pytest.raises(ValueError, match="differ"):
        sliced_linear(torch.randn(2, 64), torch.randn(10, 64, dtype=torch.float64), 1)
    with pytest.raises(ValueError, match="not a positive divisor"):
        sliced_linear(torch.randn(2, 64), torch.randn(10, 64), 3)
