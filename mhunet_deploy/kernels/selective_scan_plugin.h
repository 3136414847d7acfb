// TensorRT (>= 10) IPluginV3 for the SelectiveScan op: name, version, namespace, input order and field
// names come from selective_scan_contract.h, generated from mhunet_deploy/ops/selective_scan/contract.py.
// Types (contract v2): u, delta, B, C FLOAT or HALF (one type); A, D, delta_bias FLOAT; y FLOAT always.
#pragma once

#include <NvInferRuntime.h>

#include <cstdint>
#include <string>
#include <vector>

#include "selective_scan_contract.h"

namespace mhunet
{
namespace plugin
{

//! Checks the input shapes of one SelectiveScan node. Dimensions < 0 (unknown at build time) are
//! skipped. Returns an empty string when consistent, else a message naming the offending input.
//! dims must hold contract::kNbInputs entries in contract order.
std::string validateShapes(nvinfer1::Dims const* dims, int32_t nbInputs);

class SelectiveScanPlugin : public nvinfer1::IPluginV3,
                            public nvinfer1::IPluginV3OneCore,
                            public nvinfer1::IPluginV3OneBuild,
                            public nvinfer1::IPluginV3OneRuntime
{
public:
    //! deltaSoftplus = 0 (delta used as given) requires delta + delta_bias >= 0 on every element, as in
    //! mamba-ssm (delta is a step size; see selective_scan.h): a negative step makes exp(delta * A) > 1 and
    //! the fp32 state overflows over long sequences. Not checked at run time. The model exports 1.
    explicit SelectiveScanPlugin(int32_t deltaSoftplus);
    SelectiveScanPlugin(SelectiveScanPlugin const& other);
    SelectiveScanPlugin& operator=(SelectiveScanPlugin const&) = delete;
    ~SelectiveScanPlugin() override = default;

    int32_t deltaSoftplus() const noexcept { return mDeltaSoftplus; }

    // IPluginV3
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
    nvinfer1::IPluginV3* clone() noexcept override;

    // IPluginV3OneCore
    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;

    // IPluginV3OneBuild
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
        nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const* shapeInputs,
        int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
        nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override;
    int32_t getNbOutputs() const noexcept override;
    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;

    // IPluginV3OneRuntime
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs, nvinfer1::PluginTensorDesc const* out,
        int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

private:
    void initFields();

    int32_t mDeltaSoftplus;
    std::vector<nvinfer1::PluginField> mFields;
    nvinfer1::PluginFieldCollection mFieldCollection{};
};

class SelectiveScanPluginCreator : public nvinfer1::IPluginCreatorV3One
{
public:
    SelectiveScanPluginCreator();
    ~SelectiveScanPluginCreator() override = default;

    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override;
    nvinfer1::IPluginV3* createPlugin(
        char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase phase) noexcept override;

private:
    std::vector<nvinfer1::PluginField> mFields;
    nvinfer1::PluginFieldCollection mFieldCollection{};
};

} // namespace plugin
} // namespace mhunet

#if defined(_WIN32)
#define MHUNET_PLUGIN_EXPORT __declspec(dllexport)
#else
#define MHUNET_PLUGIN_EXPORT __attribute__((visibility("default")))
#endif

extern "C"
{
    //! Entry points that TensorRT's dynamic plugin loading looks up (trtexec --dynamicPlugins,
    //! IPluginRegistry::loadLibrary, Python's registry.load_library).
    MHUNET_PLUGIN_EXPORT nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators);
    MHUNET_PLUGIN_EXPORT void setLoggerFinder(nvinfer1::ILoggerFinder* finder);
}
