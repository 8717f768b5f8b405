"""The Open Inference Protocol v2 over gRPC (`GRPCInferenceService`: ServerLive, ServerReady, ModelReady,
ServerMetadata, ModelMetadata, ModelInfer), on grpcio's asyncio server in the service's own event loop, so it shares
the model, the dynamic batcher and the limits with REST. The protocol's messages are the ones Triton's client ships
(`tritonclient.grpc.service_pb2`, generated from KServe's `grpc_predict_v2.proto`): the server and the clients
speak from the same schema."""

from __future__ import annotations

from typing import Any

from resnetkit.serve.auth import REFUSAL, allowed
from resnetkit.serve.deps import require_grpc
from resnetkit.serve.oip import IMAGE, OipError, RequestedOutput, datatype_of, output_arrays, parsed_request, serialized
from resnetkit.serve.v2 import SERVER_NAME, answer, model_record, served

# OIP's HTTP statuses as gRPC status codes
_CODES = {
    400: "INVALID_ARGUMENT",
    404: "NOT_FOUND",
    413: "RESOURCE_EXHAUSTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


async def start_grpc(service: Any, host: str, port: int) -> tuple[Any, int]:
    """The started grpc.aio server for `service` on host:port, and the port it bound (port 0: a free one)."""
    grpc = require_grpc("grpc")
    pb2, pb2_grpc = _schema()
    server = grpc.aio.server()
    # the schema's base class answers UNIMPLEMENTED for the methods resnetkit does not (statistics, repository ...)
    servicer = type("Servicer", (_Servicer, pb2_grpc.GRPCInferenceServiceServicer), {})(service, pb2, grpc)
    pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    bound = server.add_insecure_port(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot listen for gRPC on {host}:{port}")
    await server.start()
    return server, bound


def _schema() -> tuple[Any, Any]:
    require_grpc("tritonclient.grpc")
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    return service_pb2, service_pb2_grpc


class _Servicer:
    """GRPCInferenceService's methods that resnetkit answers (the others: UNIMPLEMENTED, grpcio's default)."""

    def __init__(self, service: Any, pb2: Any, grpc: Any) -> None:
        self.service, self.pb2, self.grpc = service, pb2, grpc

    async def ServerLive(self, request: Any, context: Any) -> Any:  # noqa: N802  (the protocol's names)
        return self.pb2.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:  # noqa: N802
        return self.pb2.ServerReadyResponse(ready=self.service.ready)

    async def ModelReady(self, request: Any, context: Any) -> Any:  # noqa: N802
        try:
            served(self.service, request.name, request.version)
        except OipError:
            return self.pb2.ModelReadyResponse(ready=False)
        return self.pb2.ModelReadyResponse(ready=self.service.ready)

    async def ServerMetadata(self, request: Any, context: Any) -> Any:  # noqa: N802
        await self._check_key(context)
        from resnetkit.constants import VERSION
        from resnetkit.serve.oip import EXTENSIONS

        return self.pb2.ServerMetadataResponse(name=SERVER_NAME, version=VERSION, extensions=EXTENSIONS)

    async def ModelMetadata(self, request: Any, context: Any) -> Any:  # noqa: N802
        await self._check_key(context)
        try:
            record = model_record(self.service, request.name, request.version)
        except OipError as e:
            await self._abort(context, e)
        tensor = self.pb2.ModelMetadataResponse.TensorMetadata
        return self.pb2.ModelMetadataResponse(
            name=record["name"],
            versions=record["versions"],
            platform=record["platform"],
            inputs=[tensor(**t) for t in record["inputs"]],
            outputs=[tensor(**t) for t in record["outputs"]],
        )

    async def ModelInfer(self, request: Any, context: Any) -> Any:  # noqa: N802
        await self._check_key(context)
        s = self.service
        with s.metrics.request("v2_grpc_infer") as record:
            try:
                served(s, request.model_name, request.model_version)
                parsed = self._parsed(request)
                logits, probs = await answer(s, parsed)
            except OipError as e:
                await self._abort(context, e)
            record(len(logits))
        reply = self.pb2.ModelInferResponse(model_name=s.model_name, model_version=s.model_version, id=request.id)
        for out, array in output_arrays(parsed, logits, probs, s.predictor.classes):
            reply.outputs.add(name=out.name, datatype=datatype_of(array), shape=list(array.shape))
            reply.raw_output_contents.append(serialized(array))
        return reply

    def _parsed(self, request: Any) -> Any:
        s = self.service
        if len(request.inputs) != 1:
            raise OipError(400, f"send exactly one input, 'input' (FP32 images) or '{IMAGE}' (encoded BYTES)")
        tensor = request.inputs[0]
        raw = request.raw_input_contents[0] if request.raw_input_contents else None
        data: Any = list(tensor.contents.fp32_contents) if raw is None else None
        if raw is None and tensor.datatype == "BYTES":
            raw = b"".join(len(v).to_bytes(4, "little") + v for v in tensor.contents.bytes_contents) or None
        outputs = [
            RequestedOutput(o.name, True, int(o.parameters["classification"].int64_param))
            if "classification" in o.parameters
            else RequestedOutput(o.name, True)
            for o in request.outputs
        ]
        pre = s.predictor.preprocessing
        shape = list(tensor.shape)
        return parsed_request(
            request.id or None, tensor.name, shape, tensor.datatype, raw, data, outputs, pre.size, s.settings.max_images
        )

    async def _check_key(self, context: Any) -> None:
        """UNAUTHENTICATED unless the call carries the API key (when one is set) as `authorization` metadata;
        liveness and readiness (ServerLive, ServerReady, ModelReady) never ask for it."""
        metadata = dict(context.invocation_metadata() or ())
        if not allowed(metadata.get("authorization"), self.service.settings.api_key):
            await context.abort(self.grpc.StatusCode.UNAUTHENTICATED, REFUSAL.replace("header", "metadata"))

    async def _abort(self, context: Any, error: OipError) -> None:
        await context.abort(getattr(self.grpc.StatusCode, _CODES.get(error.status, "INTERNAL")), str(error))
