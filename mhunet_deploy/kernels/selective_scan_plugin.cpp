// TensorRT IPluginV3 implementation of SelectiveScan (see selective_scan_plugin.h).
#include "selective_scan_plugin.h"

#include "selective_scan.h"

#include <cstring>
#include <mutex>
#include <new>
#include <sstream>

using namespace nvinfer1;

namespace mhunet
{
namespace plugin
{
namespace
{

namespace ct = mhunet::contract;

std::mutex gLoggerMutex;
ILoggerFinder* gLoggerFinder = nullptr;

void logMessage(ILogger::Severity severity, std::string const& msg) noexcept
{
    try
    {
        std::lock_guard<std::mutex> lock(gLoggerMutex);
        ILogger* logger = gLoggerFinder ? gLoggerFinder->findLogger() : nullptr;
        std::string const text = std::string("[mhunet::SelectiveScan] ") + msg;
        if (logger)
            logger->log(severity, text.c_str());
    }
    catch (...)
    {
    }
}

void logError(std::string const& msg) noexcept { logMessage(ILogger::Severity::kERROR, msg); }

bool isDataType(DataType t) { return t == DataType::kFLOAT || t == DataType::kHALF; }

bool isFp32Only(int32_t index)
{
    return index == ct::kInput_A || index == ct::kInput_D || index == ct::kInput_delta_bias;
}

} // namespace

std::string validateShapes(Dims const* dims, int32_t nbInputs)
{
    if (nbInputs != ct::kNbInputs)
    {
        std::ostringstream os;
        os << "expected " << ct::kNbInputs << " inputs, got " << nbInputs;
        return os.str();
    }
    static int32_t const ranks[ct::kNbInputs] = {3, 3, 2, 4, 4, 1, 1};
    static char const* const names[ct::kNbInputs] = {"u", "delta", "A", "B", "C", "D", "delta_bias"};
    for (int32_t i = 0; i < nbInputs; ++i)
    {
        if (dims[i].nbDims != ranks[i])
        {
            std::ostringstream os;
            os << "input " << names[i] << " must have rank " << ranks[i] << ", got " << dims[i].nbDims;
            return os.str();
        }
    }
    // Unify each symbolic size; -1 (unknown) matches anything.
    struct Sym
    {
        char const* name;
        int64_t value = -1;
    };
    Sym Bsz{"B"}, Dsz{"D"}, Lsz{"L"}, Nsz{"N"}, Gsz{"G"};
    std::string err;
    auto unify = [&](Sym& s, int64_t v, int32_t input, int32_t axis) {
        if (!err.empty() || v < 0)
            return;
        if (s.value >= 0 && s.value != v)
        {
            std::ostringstream os;
            os << "input " << names[input] << " axis " << axis << " (" << s.name << ") is " << v << ", expected "
               << s.value;
            err = os.str();
            return;
        }
        s.value = v;
    };
    Dims const& u = dims[ct::kInput_u];
    unify(Bsz, u.d[0], ct::kInput_u, 0);
    unify(Dsz, u.d[1], ct::kInput_u, 1);
    unify(Lsz, u.d[2], ct::kInput_u, 2);
    Dims const& dl = dims[ct::kInput_delta];
    unify(Bsz, dl.d[0], ct::kInput_delta, 0);
    unify(Dsz, dl.d[1], ct::kInput_delta, 1);
    unify(Lsz, dl.d[2], ct::kInput_delta, 2);
    Dims const& A = dims[ct::kInput_A];
    unify(Dsz, A.d[0], ct::kInput_A, 0);
    unify(Nsz, A.d[1], ct::kInput_A, 1);
    for (int32_t idx : {ct::kInput_B, ct::kInput_C})
    {
        Dims const& m = dims[idx];
        unify(Bsz, m.d[0], idx, 0);
        unify(Gsz, m.d[1], idx, 1);
        unify(Nsz, m.d[2], idx, 2);
        unify(Lsz, m.d[3], idx, 3);
    }
    unify(Dsz, dims[ct::kInput_D].d[0], ct::kInput_D, 0);
    unify(Dsz, dims[ct::kInput_delta_bias].d[0], ct::kInput_delta_bias, 0);
    if (!err.empty())
        return err;
    if (Nsz.value == 0 || Nsz.value > MHUNET_SCAN_MAX_DSTATE)
    {
        std::ostringstream os;
        os << "d_state N = " << Nsz.value << " is not supported (1 <= N <= " << MHUNET_SCAN_MAX_DSTATE << ")";
        return os.str();
    }
    if (Gsz.value == 0 || (Gsz.value > 0 && Dsz.value >= 0 && Dsz.value % Gsz.value != 0))
    {
        std::ostringstream os;
        os << "groups G = " << Gsz.value << " must divide D = " << Dsz.value;
        return os.str();
    }
    return {};
}

// ------------------------------------------------------------------------------------------------ plugin

SelectiveScanPlugin::SelectiveScanPlugin(int32_t deltaSoftplus)
    : mDeltaSoftplus(deltaSoftplus ? 1 : 0)
{
    initFields();
}

SelectiveScanPlugin::SelectiveScanPlugin(SelectiveScanPlugin const& other)
    : IPluginV3(other)
    , IPluginV3OneCore(other)
    , IPluginV3OneBuild(other)
    , IPluginV3OneRuntime(other)
    , mDeltaSoftplus(other.mDeltaSoftplus)
{
    initFields(); // the field collection must point at this object's members, not other's
}

void SelectiveScanPlugin::initFields()
{
    mFields.clear();
    mFields.emplace_back(ct::kAttr_delta_softplus, &mDeltaSoftplus, PluginFieldType::kINT32, 1);
    mFieldCollection.nbFields = static_cast<int32_t>(mFields.size());
    mFieldCollection.fields = mFields.data();
}

IPluginCapability* SelectiveScanPlugin::getCapabilityInterface(PluginCapabilityType type) noexcept
{
    switch (type)
    {
    case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
    case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
    case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
    }
    return nullptr;
}

IPluginV3* SelectiveScanPlugin::clone() noexcept
{
    try
    {
        return new SelectiveScanPlugin(*this);
    }
    catch (std::exception const& e)
    {
        logError(std::string("clone failed: ") + e.what());
    }
    return nullptr;
}

char const* SelectiveScanPlugin::getPluginName() const noexcept { return ct::kPluginName; }
char const* SelectiveScanPlugin::getPluginVersion() const noexcept { return ct::kPluginVersion; }
char const* SelectiveScanPlugin::getPluginNamespace() const noexcept { return ct::kPluginNamespace; }

int32_t SelectiveScanPlugin::configurePlugin(
    DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    if (nbInputs != ct::kNbInputs || nbOutputs != ct::kNbOutputs || !in || !out)
    {
        logError("configurePlugin: wrong number of inputs/outputs");
        return -1;
    }
    Dims dims[ct::kNbInputs];
    for (int32_t i = 0; i < nbInputs; ++i)
        dims[i] = in[i].desc.dims;
    std::string const err = validateShapes(dims, nbInputs);
    if (!err.empty())
    {
        logError("configurePlugin: " + err);
        return -1;
    }
    return 0;
}

int32_t SelectiveScanPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    if (nbOutputs != ct::kNbOutputs || nbInputs != ct::kNbInputs || !outputTypes || !inputTypes)
        return -1;
    if (!isDataType(inputTypes[ct::kInput_u]))
    {
        logError("getOutputDataTypes: u must be FLOAT or HALF");
        return -1;
    }
    outputTypes[0] = DataType::kFLOAT; // contract v2: y is fp32 whatever the input dtype
    return 0;
}

int32_t SelectiveScanPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const* /*shapeInputs*/,
    int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs, IExprBuilder& /*exprBuilder*/) noexcept
{
    if (nbInputs != ct::kNbInputs || nbOutputs != ct::kNbOutputs || !inputs || !outputs)
        return -1;
    if (inputs[ct::kInput_u].nbDims != 3)
    {
        logError("getOutputShapes: u must have rank 3 (B, D, L)");
        return -1;
    }
    outputs[0] = inputs[ct::kInput_u]; // y has u's shape
    return 0;
}

bool SelectiveScanPlugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    if (nbInputs != ct::kNbInputs || nbOutputs != ct::kNbOutputs || pos < 0 || pos >= nbInputs + nbOutputs)
        return false;
    PluginTensorDesc const& d = inOut[pos].desc;
    if (d.format != TensorFormat::kLINEAR)
        return false;
    // A, D, delta_bias and (contract v2) the output y: FLOAT only.
    if (pos >= nbInputs || isFp32Only(pos))
        return d.type == DataType::kFLOAT;
    // u, delta, B and C: FLOAT or HALF, all the same as u.
    if (!isDataType(d.type))
        return false;
    return pos == ct::kInput_u || d.type == inOut[ct::kInput_u].desc.type;
}

int32_t SelectiveScanPlugin::getNbOutputs() const noexcept { return ct::kNbOutputs; }

size_t SelectiveScanPlugin::getWorkspaceSize(DynamicPluginTensorDesc const* /*inputs*/, int32_t /*nbInputs*/,
    DynamicPluginTensorDesc const* /*outputs*/, int32_t /*nbOutputs*/) const noexcept
{
    return 0;
}

int32_t SelectiveScanPlugin::onShapeChange(
    PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    if (nbInputs != ct::kNbInputs || nbOutputs != ct::kNbOutputs || !in || !out)
        return -1;
    Dims dims[ct::kNbInputs];
    for (int32_t i = 0; i < nbInputs; ++i)
        dims[i] = in[i].dims;
    std::string const err = validateShapes(dims, nbInputs);
    if (!err.empty())
    {
        logError("onShapeChange: " + err);
        return -1;
    }
    return 0;
}

int32_t SelectiveScanPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* outputDesc,
    void const* const* inputs, void* const* outputs, void* /*workspace*/, cudaStream_t stream) noexcept
{
    if (!inputDesc || !outputDesc || !inputs || !outputs)
        return -1;
    Dims const& u = inputDesc[ct::kInput_u].dims;
    Dims const& A = inputDesc[ct::kInput_A].dims;
    Dims const& Bm = inputDesc[ct::kInput_B].dims;
    if (u.nbDims != 3 || A.nbDims != 2 || Bm.nbDims != 4)
    {
        logError("enqueue: bad input ranks");
        return -1;
    }
    DataType const t = inputDesc[ct::kInput_u].type;
    if (!isDataType(t) || outputDesc[0].type != DataType::kFLOAT)
    {
        logError("enqueue: u must be FLOAT or HALF and y FLOAT");
        return -1;
    }
    int const rc = mhunet_selective_scan_fwd(inputs[ct::kInput_u], inputs[ct::kInput_delta],
        static_cast<float const*>(inputs[ct::kInput_A]), inputs[ct::kInput_B], inputs[ct::kInput_C],
        static_cast<float const*>(inputs[ct::kInput_D]), static_cast<float const*>(inputs[ct::kInput_delta_bias]),
        static_cast<float*>(outputs[0]), static_cast<int>(u.d[0]), static_cast<int>(u.d[1]), static_cast<int>(u.d[2]),
        static_cast<int>(A.d[1]), static_cast<int>(Bm.d[1]), mDeltaSoftplus,
        t == DataType::kFLOAT ? MHUNET_SCAN_FP32 : MHUNET_SCAN_FP16, stream);
    if (rc != MHUNET_SCAN_OK)
    {
        logError(std::string("enqueue: ") + mhunet_selective_scan_error_string(rc));
        return -1;
    }
    return 0;
}

IPluginV3* SelectiveScanPlugin::attachToContext(IPluginResourceContext* /*context*/) noexcept { return clone(); }

PluginFieldCollection const* SelectiveScanPlugin::getFieldsToSerialize() noexcept
{
    initFields();
    return &mFieldCollection;
}

// ------------------------------------------------------------------------------------------------ creator

SelectiveScanPluginCreator::SelectiveScanPluginCreator()
{
    mFields.emplace_back(ct::kAttr_delta_softplus, nullptr, PluginFieldType::kINT32, 1);
    mFieldCollection.nbFields = static_cast<int32_t>(mFields.size());
    mFieldCollection.fields = mFields.data();
}

char const* SelectiveScanPluginCreator::getPluginName() const noexcept { return ct::kPluginName; }
char const* SelectiveScanPluginCreator::getPluginVersion() const noexcept { return ct::kPluginVersion; }
char const* SelectiveScanPluginCreator::getPluginNamespace() const noexcept { return ct::kPluginNamespace; }
PluginFieldCollection const* SelectiveScanPluginCreator::getFieldNames() noexcept { return &mFieldCollection; }

IPluginV3* SelectiveScanPluginCreator::createPlugin(
    char const* /*name*/, PluginFieldCollection const* fc, TensorRTPhase /*phase*/) noexcept
{
    try
    {
        int32_t deltaSoftplus = ct::kDefault_delta_softplus;
        if (fc)
        {
            for (int32_t i = 0; i < fc->nbFields; ++i)
            {
                PluginField const& f = fc->fields[i];
                if (!f.name || std::strcmp(f.name, ct::kAttr_delta_softplus) != 0)
                {
                    logMessage(ILogger::Severity::kWARNING,
                        std::string("createPlugin: ignoring unknown field ") + (f.name ? f.name : "(null)"));
                    continue;
                }
                if (!f.data || f.length < 1)
                {
                    logError("createPlugin: field delta_softplus has no data");
                    return nullptr;
                }
                // The ONNX parser passes INT attributes as INT32; accept INT64 and INT8 too.
                if (f.type == PluginFieldType::kINT32)
                    deltaSoftplus = *static_cast<int32_t const*>(f.data);
                else if (f.type == PluginFieldType::kINT64)
                    deltaSoftplus = static_cast<int32_t>(*static_cast<int64_t const*>(f.data));
                else if (f.type == PluginFieldType::kINT8)
                    deltaSoftplus = *static_cast<int8_t const*>(f.data);
                else
                {
                    logError("createPlugin: field delta_softplus must be an integer");
                    return nullptr;
                }
            }
        }
        return new SelectiveScanPlugin(deltaSoftplus);
    }
    catch (std::exception const& e)
    {
        logError(std::string("createPlugin failed: ") + e.what());
    }
    return nullptr;
}

} // namespace plugin
} // namespace mhunet

extern "C" IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    static mhunet::plugin::SelectiveScanPluginCreator creator;
    static IPluginCreatorInterface* const creators[] = {&creator};
    nbCreators = 1;
    return creators;
}

extern "C" void setLoggerFinder(ILoggerFinder* finder)
{
    std::lock_guard<std::mutex> lock(mhunet::plugin::gLoggerMutex);
    mhunet::plugin::gLoggerFinder = finder;
}
