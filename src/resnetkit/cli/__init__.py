"""The `resnetkit` command line: argument parsing, printing and exit codes only."""

from resnetkit.constants import RUNTIMES  # a plain tuple: no torch at parse time


def add_runtime_argument(parser) -> None:  # noqa: ANN001  an argparse parser or argument group
    """`--runtime`: what an exported ONNX file runs on (constants.RUNTIMES)."""
    parser.add_argument(
        "--runtime",
        choices=RUNTIMES,
        help="exported files: the runtime (.onnx: onnxruntime or openvino; auto, the default: the faster of the "
        "two on this CPU, measured once and cached; .xml runs on openvino, .pt2 on torch.export, .pte on "
        "executorch)",
    )
