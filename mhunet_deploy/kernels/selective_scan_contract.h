// Generated from mhunet_deploy/ops/selective_scan/contract.py by
// `python -m mhunet_deploy.ops.selective_scan.contract`. Do not edit.
#pragma once
namespace mhunet { namespace contract {
constexpr char const* kPluginName = "SelectiveScan";
constexpr char const* kPluginVersion = "2";
constexpr char const* kPluginNamespace = "mhunet";
constexpr int kNbInputs = 7;
constexpr int kNbOutputs = 1;
constexpr int kInput_u = 0;
constexpr int kInput_delta = 1;
constexpr int kInput_A = 2;
constexpr int kInput_B = 3;
constexpr int kInput_C = 4;
constexpr int kInput_D = 5;
constexpr int kInput_delta_bias = 6;
constexpr char const* kAttr_delta_softplus = "delta_softplus";
constexpr int kDefault_delta_softplus = 1;
constexpr float kSoftplusThreshold = 20.0f;
}}  // namespace mhunet::contract
