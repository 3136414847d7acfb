// PyTorch binding of the selective-scan forward launcher (JIT-built by mhunet_deploy/cuda_scan.py).
#include <torch/extension.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "selective_scan.h"

#include <tuple>
#include <vector>

namespace
{

void check(const at::Tensor& t, const char* name, int64_t dims)
{
    TORCH_CHECK(t.is_cuda(), "selective_scan_cuda: ", name, " must be a CUDA tensor");
    TORCH_CHECK(t.dim() == dims, "selective_scan_cuda: ", name, " must have ", dims, " dims, got ", t.dim());
    TORCH_CHECK(t.is_contiguous(), "selective_scan_cuda: ", name, " must be contiguous");
}

at::Tensor fwd(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
    const at::Tensor& C, const c10::optional<at::Tensor>& D, const c10::optional<at::Tensor>& delta_bias,
    bool delta_softplus, int64_t items, int64_t cpw, int64_t spi, const c10::optional<at::Tensor>& out)
{
    check(u, "u", 3);
    check(delta, "delta", 3);
    check(A, "A", 2);
    check(B, "B", 4);
    check(C, "C", 4);
    const auto dt = u.scalar_type();
    TORCH_CHECK(dt == at::kFloat || dt == at::kHalf, "selective_scan_cuda: u must be float32 or float16, got ", dt);
    TORCH_CHECK(delta.scalar_type() == dt && B.scalar_type() == dt && C.scalar_type() == dt,
        "selective_scan_cuda: u, delta, B and C must share one dtype");
    TORCH_CHECK(A.scalar_type() == at::kFloat, "selective_scan_cuda: A must be float32");
    const int64_t batch = u.size(0), dim = u.size(1), len = u.size(2);
    const int64_t dstate = A.size(1), groups = B.size(1);
    TORCH_CHECK(delta.sizes() == u.sizes(), "selective_scan_cuda: delta must have u's shape");
    TORCH_CHECK(A.size(0) == dim, "selective_scan_cuda: A must be (D, N)");
    TORCH_CHECK(B.size(0) == batch && B.size(2) == dstate && B.size(3) == len, "selective_scan_cuda: B must be (B, G, N, L)");
    TORCH_CHECK(C.sizes() == B.sizes(), "selective_scan_cuda: C must have B's shape");
    const float* Dp = nullptr;
    const float* bp = nullptr;
    if (D.has_value() && D->defined())
    {
        check(*D, "D", 1);
        TORCH_CHECK(D->scalar_type() == at::kFloat && D->size(0) == dim, "selective_scan_cuda: D must be float32 (D,)");
        Dp = D->data_ptr<float>();
    }
    if (delta_bias.has_value() && delta_bias->defined())
    {
        check(*delta_bias, "delta_bias", 1);
        TORCH_CHECK(delta_bias->scalar_type() == at::kFloat && delta_bias->size(0) == dim,
            "selective_scan_cuda: delta_bias must be float32 (D,)");
        bp = delta_bias->data_ptr<float>();
    }
    const c10::cuda::CUDAGuard guard(u.device());
    at::Tensor y;
    if (out.has_value() && out->defined())
    {
        check(*out, "out", 3);
        TORCH_CHECK(out->sizes() == u.sizes() && out->scalar_type() == dt && out->device() == u.device(),
            "selective_scan_cuda: out must match u in shape, dtype and device");
        y = *out;
    }
    else
        y = at::empty_like(u);
    const int rc = mhunet_selective_scan_fwd_config(u.data_ptr(), delta.data_ptr(), A.data_ptr<float>(), B.data_ptr(),
        C.data_ptr(), Dp, bp, y.data_ptr(), (int) batch, (int) dim, (int) len, (int) dstate, (int) groups,
        delta_softplus ? 1 : 0, dt == at::kFloat ? MHUNET_SCAN_FP32 : MHUNET_SCAN_FP16, (int) items, (int) cpw,
        (int) spi, c10::cuda::getCurrentCUDAStream().stream());
    TORCH_CHECK(rc == MHUNET_SCAN_OK, "selective_scan_cuda: ", mhunet_selective_scan_error_string(rc));
    return y;
}

} // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m)
{
    m.def("fwd", &fwd, "selective scan forward", py::arg("u"), py::arg("delta"), py::arg("A"), py::arg("B"),
        py::arg("C"), py::arg("D"), py::arg("delta_bias"), py::arg("delta_softplus"), py::arg("items") = 0,
        py::arg("cpw") = 0, py::arg("spi") = 0, py::arg("out") = py::none());
    m.def("configs", []() {
        int buf[3 * 64];
        const int n = mhunet_selective_scan_configs(buf, 64);
        std::vector<std::tuple<int, int, int>> out;
        for (int i = 0; i < n && i < 64; ++i)
            out.emplace_back(buf[3 * i], buf[3 * i + 1], buf[3 * i + 2]);
        return out;
    }, "the compiled kernel configurations (items, cpw, spi)");
    m.def("default_config", [](int batch, int dim, int len, int groups, bool fp16) {
        int it = 0, cp = 0, sp = 0;
        mhunet_selective_scan_default_config(
            batch, dim, len, groups, fp16 ? MHUNET_SCAN_FP16 : MHUNET_SCAN_FP32, &it, &cp, &sp);
        return std::make_tuple(it, cp, sp);
    }, "the configuration (items, cpw, spi) the kernel uses by default for a shape");
}
