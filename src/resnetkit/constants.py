"""Fixed numbers shared across the library, typed once (ARCHITECTURE.md: no retyped mean/std)."""

VERSION = "0.1.0"

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

# Per-channel statistics of the 50,000 CIFAR-10 training images (pixel values scaled to [0, 1]).
CIFAR10_MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
CIFAR10_STD: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)

ENV_HOME = "RESNETKIT_HOME"
DEFAULT_HOME = "~/.cache/resnetkit"

# What `--runtime` can ask for an exported file to run on; "auto" is each file's own (for an ONNX file: the faster of
# ONNX Runtime and OpenVINO on this CPU, measured once: runtime.choice)
RUNTIMES = ("auto", "onnxruntime", "openvino")
