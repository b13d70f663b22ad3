// Optimizer update kernels against their textbook formulas evaluated in double precision.
#include <gtest/gtest.h>

#include <cmath>

#include "test_util.h"
#include "weir/tensor_op.h"

namespace weir::testing {
namespace {

// Runs the op's update kernel in place on (param, state...) for each gradient in turn.
void Update(const std::string& op, std::map<std::string, AttrValue> attrs,
            const std::vector<std::vector<double>>& grads, Tensor& param,
            std::vector<Tensor>& state) {
  const OpEntry* entry = TestRegistry().Find(op);
  ASSERT_NE(entry, nullptr) << op;
  const KernelFn* kernel = entry->FindKernel("cpu", DT_F32);
  ASSERT_NE(kernel, nullptr);
  for (size_t s = 0; s < grads.size(); ++s) {
    attrs["step"] = ToAttrValue(static_cast<int64_t>(s + 1));
    Attrs a(attrs);
    Tensor g = Tensor::FromValues(DT_F32, {static_cast<int64_t>(grads[s].size())}, grads[s]);
    std::vector<const Tensor*> ins = {&param, &g};
    std::vector<Tensor*> outs = {&param};
    for (Tensor& t : state) {
      ins.push_back(&t);
      outs.push_back(&t);
    }
    KernelContext ctx(ins, outs, &a);
    ASSERT_TRUE((*kernel)(ctx).ok());
  }
}

const std::vector<double> kStart = {0.5, -1.25, 2.0, 0.0, 3.5e-3};
const std::vector<std::vector<double>> kGrads = {
    {0.1, -0.2, 0.3, 1e-4, -5.0}, {0.05, 0.4, -0.1, 2e-4, -4.0}, {-0.3, 0.1, 0.2, 0.0, 6.0}};

void ExpectNear(const Tensor& t, const std::vector<double>& want) {
  std::vector<double> got = t.ToVector();
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i)
    EXPECT_NEAR(got[i], want[i], 1e-6 * (1 + std::abs(want[i]))) << "element " << i;
}

TEST(Optimizers, AdamWFollowsDecoupledWeightDecayAndBiasCorrection) {
  double lr = 0.01, b1 = 0.9, b2 = 0.95, eps = 1e-8, wd = 0.1, scale = 0.5;
  Tensor param = Tensor::FromValues(DT_F32, {5}, kStart);
  std::vector<Tensor> state = {Tensor::Zeros(DT_F32, {5}), Tensor::Zeros(DT_F32, {5})};
  Update("optim.AdamW",
         {{"lr", ToAttrValue(lr)},
          {"beta1", ToAttrValue(b1)},
          {"beta2", ToAttrValue(b2)},
          {"eps", ToAttrValue(eps)},
          {"weight_decay", ToAttrValue(wd)},
          {"grad_scale", ToAttrValue(scale)}},
         kGrads, param, state);
  std::vector<double> p = kStart, m(5, 0.0), v(5, 0.0);
  for (size_t s = 0; s < kGrads.size(); ++s) {
    double t = static_cast<double>(s + 1);
    for (size_t i = 0; i < p.size(); ++i) {
      double g = kGrads[s][i] * scale;
      m[i] = b1 * m[i] + (1 - b1) * g;
      v[i] = b2 * v[i] + (1 - b2) * g * g;
      p[i] *= 1 - lr * wd;
      p[i] -= lr * (m[i] / (1 - std::pow(b1, t))) / (std::sqrt(v[i] / (1 - std::pow(b2, t))) + eps);
    }
  }
  ExpectNear(param, p);
  ExpectNear(state[0], m);
  ExpectNear(state[1], v);
}

TEST(Optimizers, SgdWithMomentumPlainAndNesterov) {
  for (bool nesterov : {false, true}) {
    double lr = 0.1, mu = 0.9, wd = 0.01;
    Tensor param = Tensor::FromValues(DT_F32, {5}, kStart);
    std::vector<Tensor> state = {Tensor::Zeros(DT_F32, {5})};
    Update("optim.SGD",
           {{"lr", ToAttrValue(lr)},
            {"momentum", ToAttrValue(mu)},
            {"weight_decay", ToAttrValue(wd)},
            {"grad_scale", ToAttrValue(1.0)},
            {"nesterov", ToAttrValue(nesterov)}},
           kGrads, param, state);
    std::vector<double> p = kStart, buf(5, 0.0);
    for (const auto& grad : kGrads) {
      for (size_t i = 0; i < p.size(); ++i) {
        double g = grad[i] + wd * p[i];
        buf[i] = mu * buf[i] + g;
        p[i] -= lr * (nesterov ? g + mu * buf[i] : buf[i]);
      }
    }
    SCOPED_TRACE(nesterov ? "nesterov" : "plain");
    ExpectNear(param, p);
    ExpectNear(state[0], buf);
  }
}

}  // namespace
}  // namespace weir::testing
