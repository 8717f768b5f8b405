"""Weights files and URLs: round trips, unwrapping, head and first-conv adaptation, and every refusal."""

from __future__ import annotations

import hashlib
import http.server
import logging
import pickle
import threading
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import resnetkit
from resnetkit.weights import download_url

from conftest import pin_precision, randomize_norm_stats, require_module


def _model(name: str = "resnet20", **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    return randomize_norm_stats(resnetkit.create_model(name, **kw)).eval()


def _same_outputs(a: torch.nn.Module, b: torch.nn.Module, side: int = 32) -> bool:
    x = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        return torch.equal(a.eval()(x), b.eval()(x))


@pytest.mark.parametrize("suffix", [".pth", ".pt", ".safetensors"])
def test_round_trip(tmp_path: Path, suffix: str) -> None:
    src = _model()
    path = resnetkit.save_state_dict(src.state_dict(), tmp_path / f"w{suffix}")
    assert not list(tmp_path.glob("*.tmp"))  # the atomic write leaves nothing behind
    assert _same_outputs(src, resnetkit.create_model("resnet20", weights=path))


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: {"module." + k: v for k, v in sd.items()},
        lambda sd: {"_orig_mod.module." + k: v for k, v in sd.items()},
        lambda sd: {"state_dict": sd, "epoch": 3},
        lambda sd: {"model": {"module." + k: v for k, v in sd.items()}, "optimizer": {}},
    ],
    ids=["module", "orig_mod+module", "state_dict-key", "model-key+module"],
)
def test_wrapped_and_prefixed_state_dicts_load(tmp_path: Path, wrap) -> None:
    src = _model()
    torch.save(wrap(src.state_dict()), tmp_path / "w.pth")
    assert _same_outputs(src, resnetkit.create_model("resnet20", weights=tmp_path / "w.pth"))


def test_num_classes_from_file_and_head_reinit(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    src = _model(num_classes=5)
    path = resnetkit.save_state_dict(src.state_dict(), tmp_path / "w.safetensors")
    assert resnetkit.create_model("resnet20", weights=path).num_classes == 5  # the file decides by default
    with caplog.at_level(logging.INFO, logger="resnetkit"):
        other = resnetkit.create_model("resnet20", weights=path, num_classes=3)
    assert "re-initialised the classifier head" in caplog.text
    assert other.fc.out_features == 3
    assert torch.equal(other.conv1.weight, src.conv1.weight)  # the backbone was loaded


def test_pretrained_first_conv_adapts_to_one_channel(tmp_path: Path) -> None:
    src = _model("resnet18")
    path = resnetkit.save_state_dict(src.state_dict(), tmp_path / "w.pth")
    grey_model = resnetkit.create_model("resnet18", weights=path, in_chans=1).eval()
    grey = torch.rand(2, 1, 64, 64)
    with torch.no_grad():  # summing the RGB kernel makes a grey image behave as R = G = B
        torch.testing.assert_close(grey_model(grey), src(grey.expand(-1, 3, -1, -1)), rtol=1e-4, atol=1e-4)
    assert grey_model.default_cfg.input_size == (1, 224, 224) and len(grey_model.default_cfg.mean) == 1


def test_public_cifar_layout_with_other_classes(tmp_path: Path) -> None:
    # The head is found under the model's `default_cfg.classifier` after its key aliases (`linear.` -> `fc.`).
    src = _model(num_classes=5)
    state = {k.replace("fc.", "linear."): v for k, v in src.state_dict().items()}
    path = resnetkit.save_state_dict(state, tmp_path / "w.pth")
    loaded = resnetkit.create_model("resnet20", weights=path)
    assert loaded.num_classes == 5 and _same_outputs(src, loaded)
    other = resnetkit.create_model("resnet20", weights=path, num_classes=3)
    assert other.fc.out_features == 3 and torch.equal(other.conv1.weight, src.conv1.weight)


class _Named(torch.nn.Module):
    """A model whose first conv and classifier are not called conv1 / fc: the weights layer must ask."""

    def __init__(self, in_chans: int = 3, num_classes: int = 4) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(in_chans, 8, 3, bias=False)
        self.head = torch.nn.Linear(8, num_classes)
        self.default_cfg = resnetkit.DataConfig((in_chans, 8, 8), (0.5,) * in_chans, (0.5,) * in_chans)
        self.default_cfg = replace(self.default_cfg, first_conv="stem", classifier="head")


def test_load_into_model_reads_module_names_from_default_cfg() -> None:
    from resnetkit.weights import load_into_model

    src = _Named()
    grey = _Named(in_chans=1, num_classes=2)
    load_into_model(grey, src.state_dict(), "named.pth", keep_head=False)
    assert torch.equal(grey.stem.weight, src.stem.weight.sum(dim=1, keepdim=True))
    assert grey.head.out_features == 2
    unnamed = _Named(num_classes=2)
    unnamed.default_cfg = replace(unnamed.default_cfg, first_conv=None, classifier=None)
    with pytest.raises(resnetkit.WeightsError, match="names no classifier"):
        load_into_model(unnamed, src.state_dict(), "named.pth", keep_head=False)
    load_into_model(unnamed, src.state_dict(), "named.pth", keep_head=False, classifier="head")  # told explicitly
    assert torch.equal(unnamed.stem.weight, src.stem.weight)


@pytest.mark.parametrize(
    ("url", "prefix"),
    [
        ("https://download.pytorch.org/models/resnet50-11ad3fa6.pth", "11ad3fa6"),
        ("v0.1-rsb-weights/resnet50_a1_0-14fe96d1.pth", "14fe96d1"),  # a timm release path
        ("https://h/resnet20-12fca82f.th#sha256=" + "0" * 64, "12fca82f"),
        ("resnet50.pth", None),
        ("https://h/v0.1-deadbeef0/weights.pth", None),  # a hash in a folder is not the file's
    ],
)
def test_hub_hash_prefix(url: str, prefix: str | None) -> None:
    from resnetkit.weights.download import hub_hash_prefix

    assert hub_hash_prefix(url) == prefix


def test_pickle_with_code_payload_is_refused_without_running(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps({"conv1.weight": Payload()}, protocol=2))
    zipped = tmp_path / "zipped.pth"
    torch.save({"conv1.weight": Payload()}, zipped)
    assert not marker.exists()
    for path in (raw, zipped):
        with pytest.raises(resnetkit.WeightsError, match="refusing to load .*pickled Python objects"):
            resnetkit.create_model("resnet20", weights=path)
    assert not marker.exists()


def test_bad_files_give_one_line_errors(tmp_path: Path) -> None:
    good = resnetkit.save_state_dict(_model().state_dict(), tmp_path / "good.pth")
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    text = tmp_path / "notes.pth"
    text.write_text("these are not weights\n")
    bad_st = tmp_path / "bad.safetensors"
    bad_st.write_bytes(b"\x00" * 16)
    tensor_only = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), tensor_only)
    cases = {
        truncated: "truncated or not a PyTorch checkpoint",
        text: "not a PyTorch checkpoint",
        bad_st: "cannot read .* as safetensors",
        tensor_only: "holds no state dict",
        tmp_path / "missing.pth": "weights file not found",
    }
    for path, message in cases.items():
        with pytest.raises(resnetkit.WeightsError, match=message) as info:
            resnetkit.create_model("resnet20", weights=path)
        assert "\n" not in str(info.value)


def test_checkpoint_of_another_architecture_lists_keys(tmp_path: Path) -> None:
    path = resnetkit.save_state_dict(_model("resnet32").state_dict(), tmp_path / "r32.pth")
    with pytest.raises(resnetkit.WeightsError, match=r"does not fit .*unexpected: layer1\.3\.conv1\.weight"):
        resnetkit.create_model("resnet20", weights=path)
    path = resnetkit.save_state_dict(_model("resnet18").state_dict(), tmp_path / "r18.pth")
    with pytest.raises(resnetkit.WeightsError, match=r"missing: .*; unexpected: .*; shape mismatch: conv1\.weight"):
        resnetkit.create_model("resnet20", weights=path)


def test_failed_load_leaves_no_half_loaded_model(tmp_path: Path) -> None:
    from resnetkit.weights import load_into_model, read_state_dict

    state = read_state_dict(resnetkit.save_state_dict(_model("resnet32").state_dict(), tmp_path / "r32.pth"))
    target = resnetkit.create_model("resnet20")
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(resnetkit.WeightsError):
        load_into_model(target, state, "r32.pth")
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())


# --- URLs, served from 127.0.0.1 by the test itself (never the internet) ---------------------------------------


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_url_with_sha256_downloads_verifies_and_caches(server, tmp_path, monkeypatch) -> None:
    base, root = server
    monkeypatch.setenv("RESNETKIT_HOME", str(pin_precision(tmp_path / "home")))
    src = _model()
    file = resnetkit.save_state_dict(src.state_dict(), root / "r20.pth")
    url = f"{base}/r20.pth"
    assert _same_outputs(src, resnetkit.create_model("resnet20", weights=url, weights_sha256=_sha(file)))
    cached = tmp_path / "home" / "weights" / "r20.pth"
    assert cached.is_file()
    file.unlink()  # a second load is served from the verified cache
    assert _same_outputs(src, resnetkit.create_model("resnet20", weights=f"{url}#sha256={_sha(cached)}"))


def test_url_in_torchvision_and_timm_format(server, tmp_path, monkeypatch) -> None:
    timm = require_module("timm")
    import torchvision

    base, root = server
    monkeypatch.setenv("RESNETKIT_HOME", str(pin_precision(tmp_path / "home")))
    for prefix, ref in (("tv", torchvision.models.resnet18()), ("timm", timm.create_model("resnet18"))):
        randomize_norm_stats(ref).eval()
        path = root / f"{prefix}_resnet18.pth"
        torch.save(ref.state_dict(), path)
        digest = _sha(path)
        hub_name = root / f"{prefix}_resnet18-{digest[:8]}.pth"  # torch.hub's hash-in-name convention
        path.rename(hub_name)
        model = resnetkit.create_model("resnet18", weights=f"{base}/{hub_name.name}")
        assert _same_outputs(ref, model, side=64)


def test_wrong_sha256_is_refused_and_nothing_is_kept(server, tmp_path, monkeypatch) -> None:
    base, root = server
    monkeypatch.setenv("RESNETKIT_HOME", str(pin_precision(tmp_path / "home")))
    resnetkit.save_state_dict(_model().state_dict(), root / "r20.pth")
    with pytest.raises(resnetkit.WeightsError, match="sha256 mismatch .*expected 0{64}, got [0-9a-f]{64}"):
        resnetkit.create_model("resnet20", weights=f"{base}/r20.pth", weights_sha256="0" * 64)
    assert not any((tmp_path / "home" / "weights").iterdir())


def test_url_without_hash_or_server_gives_clear_errors(server, tmp_path, monkeypatch) -> None:
    base, _ = server
    monkeypatch.setenv("RESNETKIT_HOME", str(pin_precision(tmp_path / "home")))
    with pytest.raises(resnetkit.WeightsError, match="no sha256 given"):
        resnetkit.create_model("resnet20", weights=f"{base}/r20.pth")
    with pytest.raises(resnetkit.WeightsError, match=r"cannot download .*offline, put the file at .*r20\.pth"):
        download_url(f"{base}/r20.pth", "a" * 64, progress=False)


def test_interrupted_download_is_resumed_with_a_range_request(tmp_path, monkeypatch) -> None:
    """A server that drops the first transfer half-way, then honours Range: the second call completes it."""
    monkeypatch.setenv("RESNETKIT_HOME", str(pin_precision(tmp_path / "home")))
    blob = resnetkit.save_state_dict(_model().state_dict(), tmp_path / "r20.pth").read_bytes()
    ranges: list[str | None] = []

    class Flaky(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            ranges.append(self.headers.get("Range"))
            start = int(self.headers["Range"].split("=")[1].rstrip("-")) if self.headers.get("Range") else 0
            body = blob[start:] if len(ranges) > 1 else blob[: len(blob) // 2]  # first answer: cut short
            self.send_response(206 if start else 200)
            self.send_header("Content-Length", str(len(blob) - start))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/r20.pth"
    digest = hashlib.sha256(blob).hexdigest()
    try:
        with pytest.raises(resnetkit.WeightsError, match="cannot download"):
            download_url(url, digest, progress=False)
        partial = tmp_path / "home" / "weights" / "r20.pth.unverified.partial"
        assert partial.stat().st_size == len(blob) // 2  # kept for the next try
        path = download_url(url, digest, progress=False)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert ranges == [None, f"bytes={len(blob) // 2}-"]
    assert path.read_bytes() == blob and not partial.exists()


def test_corrupt_cached_file_is_downloaded_again(server, tmp_path, monkeypatch) -> None:
    base, root = server
    monkeypatch.setenv("RESNETKIT_HOME", str(pin_precision(tmp_path / "home")))
    file = resnetkit.save_state_dict(_model().state_dict(), root / "r20.pth")
    cached = tmp_path / "home" / "weights" / "r20.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"corrupt")
    path = download_url(f"{base}/r20.pth", _sha(file), progress=False)
    assert path.read_bytes() == file.read_bytes()


def test_corrupt_cached_registry_file_offline_is_a_clear_error(tmp_path, monkeypatch) -> None:
    from resnetkit.weights.registry import get_weights

    monkeypatch.setenv("RESNETKIT_HOME", str(pin_precision(tmp_path / "home")))
    monkeypatch.setenv("RESNETKIT_OFFLINE", "1")
    entry = get_weights("resnet18.tv_in1k")
    cached = tmp_path / "home" / "weights" / entry.url.rsplit("/", 1)[-1]
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"corrupt")
    with pytest.raises(
        resnetkit.WeightsError, match=r"cached .* is corrupt \(sha256 mismatch\) and RESNETKIT_OFFLINE=1"
    ):
        resnetkit.create_model("resnet18", weights="resnet18.tv_in1k")


def test_torchvision_and_timm_state_dicts_load_by_path(tmp_path) -> None:
    timm = require_module("timm")
    import torchvision

    for prefix, ref in (("tv", torchvision.models.resnet50()), ("timm", timm.create_model("resnet50"))):
        randomize_norm_stats(ref).eval()
        path = tmp_path / f"{prefix}_resnet50.pth"
        torch.save(ref.state_dict(), path)
        assert _same_outputs(ref, resnetkit.create_model("resnet50", weights=path), side=64)
