// TensorRT plugin (IPluginV3) for the fused gated residual add: out = dtype(float(x) + gate * float(y)).
//
// Design note
// -----------
// The same kernel as the torch op (kernels/gated_residual_add.cu), exposed to TensorRT so an ONNX graph holding a
// `LcGatedResidualAdd` node (inputs x [B, N, C], gate fp32 [B, F, 1, C], y [B, N, C]; output like x) builds into a
// plan: TensorRT's ONNX parser falls back to the plugin registry for op types it does not know. The frame count F
// is read from the gate's shape, so the plugin has no attributes and serializes nothing.
// Formats: linear only; x, y and the output share one type (fp32, fp16 or bf16), the gate is fp32.
//
// NOT COMPILED HERE: TensorRT's headers are not available on the project's machines. Written against the
// TensorRT 10 plugin interfaces (NvInferRuntime.h: IPluginV3, IPluginV3OneCore/Build/Runtime, IPluginCreatorV3One);
// CMakeLists.txt builds it only when it finds NvInferRuntime.h. docs/engines.md records it as unverified.

#include <NvInferRuntime.h>

#include <new>
#include <string>

#include "../kernels/gated_residual_add.h"

namespace lc::trt {

using namespace nvinfer1;

constexpr char const* kPluginName = "LcGatedResidualAdd";
constexpr char const* kPluginVersion = "1";

class GatedResidualAddPlugin final : public IPluginV3,
                                     public IPluginV3OneCore,
                                     public IPluginV3OneBuild,
                                     public IPluginV3OneRuntime {
 public:
  explicit GatedResidualAddPlugin(std::string name_space) : namespace_(std::move(name_space)) {}

  // IPluginV3 ---------------------------------------------------------------------------------------------
  IPluginCapability* getCapabilityInterface(PluginCapabilityType type) noexcept override {
    switch (type) {
      case PluginCapabilityType::kCORE:
        return static_cast<IPluginV3OneCore*>(this);
      case PluginCapabilityType::kBUILD:
        return static_cast<IPluginV3OneBuild*>(this);
      case PluginCapabilityType::kRUNTIME:
        return static_cast<IPluginV3OneRuntime*>(this);
    }
    return nullptr;
  }

  IPluginV3* clone() noexcept override { return new (std::nothrow) GatedResidualAddPlugin(namespace_); }

  // IPluginV3OneCore --------------------------------------------------------------------------------------
  AsciiChar const* getPluginName() const noexcept override { return kPluginName; }
  AsciiChar const* getPluginVersion() const noexcept override { return kPluginVersion; }
  AsciiChar const* getPluginNamespace() const noexcept override { return namespace_.c_str(); }

  // IPluginV3OneBuild -------------------------------------------------------------------------------------
  int32_t configurePlugin(DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* out,
                          int32_t nbOutputs) noexcept override {
    return nbInputs == 3 && nbOutputs == 1 && in[0].desc.dims.nbDims == 3 ? 0 : -1;
  }

  int32_t getOutputDataTypes(DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes,
                             int32_t nbInputs) const noexcept override {
    if (nbOutputs != 1 || nbInputs != 3) return -1;
    outputTypes[0] = inputTypes[0];
    return 0;
  }

  int32_t getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const* shapeInputs,
                          int32_t nbShapeInputs, DimsExprs* outputs, int32_t nbOutputs,
                          IExprBuilder& exprBuilder) noexcept override {
    if (nbInputs != 3 || nbOutputs != 1) return -1;
    outputs[0] = inputs[0];  // out has x's shape
    return 0;
  }

  bool supportsFormatCombination(int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
                                 int32_t nbOutputs) noexcept override {
    PluginTensorDesc const& d = inOut[pos].desc;
    if (d.format != TensorFormat::kLINEAR) return false;
    if (pos == 0) return d.type == DataType::kFLOAT || d.type == DataType::kHALF || d.type == DataType::kBF16;
    if (pos == 1) return d.type == DataType::kFLOAT;  // the gate stays fp32 (the DiT's fp32 modulation)
    return d.type == inOut[0].desc.type;             // y and the output follow x
  }

  int32_t getNbOutputs() const noexcept override { return 1; }

  // IPluginV3OneRuntime -----------------------------------------------------------------------------------
  int32_t onShapeChange(PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* out,
                        int32_t nbOutputs) noexcept override {
    return 0;
  }

  int32_t enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* outputDesc, void const* const* inputs,
                  void* const* outputs, void* workspace, cudaStream_t stream) noexcept override {
    Dims const& x = inputDesc[0].dims;
    Dims const& gate = inputDesc[1].dims;
    if (x.nbDims != 3 || gate.nbDims < 3) return -1;
    lc::DType dtype;
    switch (inputDesc[0].type) {
      case DataType::kFLOAT:
        dtype = lc::DType::kFloat32;
        break;
      case DataType::kHALF:
        dtype = lc::DType::kFloat16;
        break;
      case DataType::kBF16:
        dtype = lc::DType::kBFloat16;
        break;
      default:
        return -1;
    }
    cudaError_t status =
        lc::launch_gated_residual_add(outputs[0], inputs[0], static_cast<float const*>(inputs[1]), inputs[2], dtype,
                                      x.d[0], x.d[1], gate.d[1], x.d[2], stream);
    return status == cudaSuccess ? 0 : -1;
  }

  IPluginV3* attachToContext(IPluginResourceContext* context) noexcept override { return clone(); }

  PluginFieldCollection const* getFieldsToSerialize() noexcept override { return &no_fields_; }

 private:
  std::string namespace_;
  PluginFieldCollection no_fields_{0, nullptr};
};

class GatedResidualAddCreator final : public IPluginCreatorV3One {
 public:
  IPluginV3* createPlugin(AsciiChar const* name, PluginFieldCollection const* fc,
                          TensorRTPhase phase) noexcept override {
    return new (std::nothrow) GatedResidualAddPlugin(namespace_);
  }
  PluginFieldCollection const* getFieldNames() noexcept override { return &no_fields_; }
  AsciiChar const* getPluginName() const noexcept override { return kPluginName; }
  AsciiChar const* getPluginVersion() const noexcept override { return kPluginVersion; }
  AsciiChar const* getPluginNamespace() const noexcept override { return namespace_.c_str(); }

 private:
  std::string namespace_;
  PluginFieldCollection no_fields_{0, nullptr};
};

// Registered when the library is loaded (ctypes.CDLL with RTLD_GLOBAL as lc_runtime.engines.tensorrt does, dlopen,
// trtexec --plugins=liblc_trt_plugins.so).
REGISTER_TENSORRT_PLUGIN(GatedResidualAddCreator);

}  // namespace lc::trt
