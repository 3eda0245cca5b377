"""Released models by name, end to end against a real HTTP server on 127.0.0.1.

The server (``tests/hub_server.py``) serves archives in the official layouts (a CLIP-EBC release
``.tgz`` holding ``best_mae_0.pth``, a CLIP-Count Lightning ``.ckpt``, an OpenAI CLIP TorchScript
``.pt``) built from random weights with the official key names and shapes at tiny widths (the
layouts of ``tests/test_models_official.py``; the real ViT-B/16 file is ~640 MB). A registry
file written per test describes those tiny architectures through the same keys the shipped
registry uses (an inline open_clip backbone instead of ``ViT-B-16``) and points at the server.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from hub_server import FileServer
from test_models_official import assert_all_landed, count_trainable, random_state, tiny_official_ebc

from engines.checkpoint import load_checkpoint, read_metadata
from engines.modelcard import card_of
from engines.models import small_spec
from engines.models.hub import (
    HashMismatch,
    HubError,
    LayoutError,
    Registry,
    TextProgress,
    converted_path,
    pull,
    resolve,
    status,
)
from engines.predict import predict
from engines.yamlconfig import ConfigError

torch.set_num_threads(1)

SPEC, SHAPES = tiny_official_ebc("vit")
EBC_ARGS = {"backbone": SPEC.backbone, "dataset": "sha", "truncation": 4, "granularity": "fine",
            "anchor_type": "average", "block_size": 8, "prompt_type": "word", "window": 224,
            "num_vpt": 4, "deep_vpt": True, "normalisation": "imagenet"}


def tgz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def zipped(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def torch_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def ebc_entry(url: str, *, member: list[str] | None = None, archive: str = "tgz",
              sha256: str | None = None) -> dict[str, Any]:
    return {"title": "tiny CLIP-EBC ViT in the v1.0.0 release layout", "family": "clip_ebc",
            "source": {"urls": [url], "page": "http://127.0.0.1/release", "file": "tiny_ebc.tgz",
                       "sha256": sha256},
            "layout": {"archive": archive, "member": member or ["best_mae_0.pth"],
                       "format": "ebc_state_dict"},
            "convert": dict(EBC_ARGS), "licence": "MIT (test weights)",
            "attribution": "random weights made by the test",
            "card": {"summary": "tiny test model", "trained_on": ["nothing (random weights)"],
                     "scenes": ["unit tests"],
                     "figures": [{"dataset": "none", "mae": 1.5, "source": "made up"}]}}


def write_registry(path: Path, entries: dict[str, Any]) -> Registry:
    path.write_text(yaml.safe_dump({"version": 1, "models": entries}, sort_keys=False))
    return Registry.load(path)


@pytest.fixture
def server() -> Any:
    with FileServer() as srv:
        yield srv


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CROWDSTREAM_HOME", str(tmp_path / "home"))
    return tmp_path / "home" / "models"


@pytest.fixture
def ebc_release(server: FileServer, tmp_path: Path) -> tuple[Registry, dict[str, Any], bytes]:
    state = random_state(SHAPES, seed=21)
    data = tgz({"best_mae_0.pth": torch_bytes(state)})
    server.files["/v1.0.0/tiny_ebc.tgz"] = data
    reg = write_registry(tmp_path / "registry.yaml",
                         {"tiny-ebc": ebc_entry(server.url("/v1.0.0/tiny_ebc.tgz"))})
    return reg, state, data


def test_pull_converts_loads_and_predicts(ebc_release: tuple[Registry, dict[str, Any], bytes],
                                          server: FileServer, home: Path) -> None:
    reg, state, data = ebc_release
    seen: list[tuple[int, int | None]] = []
    path = pull("tiny-ebc", registry=reg, progress_for=lambda _label: lambda d, t: seen.append((d, t)))
    assert path == home / "tiny-ebc.pt" and status(reg.get("tiny-ebc"), home) == "converted"
    assert seen[-1] == (len(data), len(data))  # the progress display saw the whole file
    model, meta = load_checkpoint(path)
    assert_all_landed(model, {k: v for k, v in state.items() if not k.startswith("text_encoder.")})
    assert model.spec.name == "tiny-ebc" and model.spec.anchors[-1] == pytest.approx(4.29992)
    sha = hashlib.sha256(data).hexdigest()
    assert meta["source_sha256"] == sha and meta["source"] == server.url("/v1.0.0/tiny_ebc.tgz")
    card = card_of(path)
    assert card is not None and card.name == "tiny-ebc" and card.scenes == ("unit tests",)
    assert card.licence == "MIT (test weights)" and card.command == "crowdstream models pull tiny-ebc"
    assert card.figures[0].mae == 1.5
    dm = predict(model, np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8))
    assert dm.map.shape == (38, 50) and np.isfinite(dm.count) and dm.count > 0
    # the SHA-256 is recorded on the first download ...
    book = json.loads((home / "hashes.json").read_text())
    assert book["tiny_ebc.tgz"]["sha256"] == sha
    # ... and a second pull verifies the cached file without downloading again
    n = len(server.requests)
    assert pull("tiny-ebc", registry=reg) == path and len(server.requests) == n
    assert resolve("tiny-ebc", registry=reg) == path


def test_interrupted_download_resumes_with_a_range_request(
        ebc_release: tuple[Registry, dict[str, Any], bytes], server: FileServer, home: Path) -> None:
    reg, _state, data = ebc_release
    half = len(data) // 2
    server.drop_at["/v1.0.0/tiny_ebc.tgz"] = half  # the first answer breaks off mid-file
    shown = io.StringIO()
    path = pull("tiny-ebc", registry=reg, progress_for=lambda label: TextProgress(label, shown))
    lines = shown.getvalue().splitlines()  # not a terminal: one line per 10 %, then the total
    assert lines[-1].startswith(f"tiny-ebc: {len(data) / 1e6:.1f}/{len(data) / 1e6:.1f} MB 100.0%")
    assert server.requests == [("/v1.0.0/tiny_ebc.tgz", None),
                               ("/v1.0.0/tiny_ebc.tgz", f"bytes={half}-")]
    dl = home / "downloads" / "tiny_ebc.tgz"
    assert hashlib.sha256(dl.read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()
    assert not dl.with_name("tiny_ebc.tgz.part").exists()
    assert read_metadata(path)["source_sha256"] == hashlib.sha256(data).hexdigest()


def test_a_partial_file_from_an_earlier_run_is_resumed(
        ebc_release: tuple[Registry, dict[str, Any], bytes], server: FileServer, home: Path) -> None:
    reg, _state, data = ebc_release
    cut = len(data) // 3
    server.drop_at["/v1.0.0/tiny_ebc.tgz"] = cut
    with pytest.raises(HubError, match=rf"{cut} bytes are kept in .*tiny_ebc.tgz.part.*resumes"):
        pull("tiny-ebc", registry=reg, retries=0)
    part = home / "downloads" / "tiny_ebc.tgz.part"
    assert part.stat().st_size == cut and status(reg.get("tiny-ebc"), home) == "partial"
    pull("tiny-ebc", registry=reg)  # a later run picks the partial file up
    assert server.requests[-1] == ("/v1.0.0/tiny_ebc.tgz", f"bytes={cut}-")
    assert (home / "downloads" / "tiny_ebc.tgz").read_bytes() == data


def test_a_server_that_ignores_ranges_gives_the_whole_file_again(
        ebc_release: tuple[Registry, dict[str, Any], bytes], server: FileServer, home: Path) -> None:
    reg, _state, data = ebc_release
    server.drop_at["/v1.0.0/tiny_ebc.tgz"] = 1000
    server.ranges = False
    pull("tiny-ebc", registry=reg)
    assert (home / "downloads" / "tiny_ebc.tgz").read_bytes() == data


def test_a_corrupted_file_is_refused(ebc_release: tuple[Registry, dict[str, Any], bytes],
                                     server: FileServer, home: Path) -> None:
    reg, _state, data = ebc_release
    good = hashlib.sha256(data).hexdigest()
    pull("tiny-ebc", registry=reg)
    # the cached copy rots on disk (or the server later sends other bytes): refused, named
    dl = home / "downloads" / "tiny_ebc.tgz"
    bad = bytearray(data)
    bad[len(bad) // 2] ^= 0xFF
    dl.write_bytes(bytes(bad))
    (home / "tiny-ebc.pt").unlink()
    bad_sha = hashlib.sha256(bytes(bad)).hexdigest()
    with pytest.raises(HashMismatch) as err:
        pull("tiny-ebc", registry=reg)
    msg = str(err.value)
    assert "tiny_ebc.tgz" in msg and bad_sha in msg and good in msg and "first download" in msg
    assert not (home / "tiny-ebc.pt").exists() and dl.with_name("tiny_ebc.tgz.rejected").exists()
    # a corrupted download is refused too; the good file downloads again afterwards
    server.files["/v1.0.0/tiny_ebc.tgz"] = bytes(bad)
    with pytest.raises(HashMismatch, match=bad_sha):
        pull("tiny-ebc", registry=reg)
    server.files["/v1.0.0/tiny_ebc.tgz"] = data
    assert pull("tiny-ebc", registry=reg).is_file()


def test_the_registry_hash_is_enforced_on_the_first_download(
        server: FileServer, tmp_path: Path, home: Path) -> None:
    data = tgz({"best_mae_0.pth": torch_bytes(random_state(SHAPES, seed=2))})
    server.files["/x.tgz"] = data
    reg = write_registry(tmp_path / "r.yaml", {"tiny-ebc": ebc_entry(server.url("/x.tgz"),
                                                                      sha256="0" * 64)})
    with pytest.raises(HashMismatch, match=r"expected 0{64} \(the registry tiny-ebc entry\)"):
        pull("tiny-ebc", registry=reg)
    reg = write_registry(tmp_path / "r.yaml", {"tiny-ebc": ebc_entry(
        server.url("/x.tgz"), sha256=hashlib.sha256(data).hexdigest())})
    assert pull("tiny-ebc", registry=reg).is_file()


def test_a_wrong_archive_layout_is_named(server: FileServer, tmp_path: Path, home: Path) -> None:
    state = torch_bytes(random_state(SHAPES, seed=3))
    server.files["/nested.tgz"] = tgz({"ckpt/model.pth": state, "README.txt": b"hi"})
    server.files["/plain.pth"] = state
    reg = write_registry(tmp_path / "r.yaml", {
        "nested": ebc_entry(server.url("/nested.tgz")) | {"source": {
            "urls": [server.url("/nested.tgz")], "file": "nested.tgz"}},
        "plain": ebc_entry(server.url("/plain.pth")) | {"source": {
            "urls": [server.url("/plain.pth")], "file": "plain.pth"}}})
    with pytest.raises(LayoutError) as err:
        pull("nested", registry=reg)
    msg = str(err.value)
    assert "member best_mae_0.pth" in msg and "it holds: README.txt, ckpt/model.pth" in msg
    with pytest.raises(LayoutError, match="plain.pth is not a readable tar archive .*archive tgz"):
        pull("plain", registry=reg)


def test_a_zip_release_of_a_resnet_model(server: FileServer, tmp_path: Path, home: Path) -> None:
    spec, shapes = tiny_official_ebc("rn")
    state = random_state(shapes, seed=5)
    server.files["/rn.zip"] = zipped({"sha/best_rmse.pth": b"", "sha/best_mae.pth": torch_bytes(state)})
    entry = ebc_entry(server.url("/rn.zip"), archive="zip", member=["*best_mae*.pth"])
    entry["source"]["file"] = "rn.zip"
    entry["convert"] |= {"backbone": spec.backbone, "window": 224, "num_vpt": 0}
    reg = write_registry(tmp_path / "r.yaml", {"tiny-rn": entry})
    model, _ = load_checkpoint(pull("tiny-rn", registry=reg))
    assert_all_landed(model, {k: v for k, v in state.items() if not k.startswith("text_encoder.")})
    assert model.spec.backbone == spec.backbone and model.spec.num_vpt == 0


def test_an_html_page_instead_of_the_file_is_refused(server: FileServer, tmp_path: Path,
                                                     home: Path) -> None:
    server.files["/drive"] = b"<!DOCTYPE html><html><body>Google Drive can't scan this file"
    server.content_types["/drive"] = "text/html; charset=utf-8"
    reg = write_registry(tmp_path / "r.yaml", {"tiny-ebc": ebc_entry(server.url("/drive"))})
    with pytest.raises(HubError, match="HTML page, not a model file.*--file"):
        pull("tiny-ebc", registry=reg)
    assert not (home / "hashes.json").exists()  # nothing recorded for a page


def test_a_local_copy_can_stand_in_for_the_download(tmp_path: Path, home: Path) -> None:
    state = random_state(SHAPES, seed=4)
    local = tmp_path / "best_mae_0.pth"
    torch.save(state, local)
    entry = ebc_entry("http://127.0.0.1:9/never") | {
        "source": {"urls": [], "page": "http://127.0.0.1/release"},
        "layout": {"archive": "auto", "member": ["*.pth"], "format": "ebc_state_dict"}}
    reg = write_registry(tmp_path / "r.yaml", {"manual": entry})
    with pytest.raises(HubError, match=r"no download URL on record.*pull manual --file FILE"):
        pull("manual", registry=reg)
    path = pull("manual", registry=reg, local_file=local)
    assert_all_landed(load_checkpoint(path)[0],
                      {k: v for k, v in state.items() if not k.startswith("text_encoder.")})
    assert card_of(path).source == "local file best_mae_0.pth"


# -- CLIP-Count: two entries, the frozen towers from an open_clip TorchScript file ----------------


@pytest.fixture
def count_release(server: FileServer, tmp_path: Path) -> tuple[Registry, Any, dict[str, Any]]:
    import open_clip

    base = small_spec("count-tiny")
    cfg = {k: v for k, v in base.backbone.items() if k != "name"}
    torch.manual_seed(12)
    clip = open_clip.model.CLIP(**cfg, quick_gelu=True).eval()
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(clip), buf)  # what OpenAI's ViT-B-16.pt is: TorchScript
    server.files["/clip/tiny.pt"] = buf.getvalue()
    state = random_state(count_trainable(128, 64, 64, 2, 4, 4), seed=9)
    ckpt = {"state_dict": state, "pytorch-lightning_version": "1.9.0",
            "hyper_parameters": {"decoder_head": 4, "vpt_width": 4, "vpt_depth": 2,
                                 "coop_width": 2, "use_mixed_fim": True, "use_vpt": True}}
    server.files["/uc"] = torch_bytes(ckpt)
    reg = write_registry(tmp_path / "registry.yaml", {
        "tiny-openclip": {
            "title": "tiny CLIP towers", "family": "open_clip",
            "source": {"urls": [server.url("/clip/tiny.pt")], "file": "openai-tiny.pt"},
            "layout": {"archive": "none", "format": "openai_jit"},
            "convert": {"backbone": base.backbone, "tag": "openai", "quick_gelu": True},
            "licence": "MIT (test)", "attribution": "test"},
        "tiny-count": {
            "title": "tiny CLIP-Count", "family": "clip_count",
            "source": {"urls": [server.url("/uc") + "?id=1&export=download"], "file": "count.ckpt"},
            "layout": {"archive": "none", "format": "count_lightning"},
            "convert": {"backbone": base.backbone, "pretrained": {"model": "tiny-openclip"},
                        "heads": 4, "vpt_width": 4, "vpt_depth": 2, "n_ctx": 2,
                        "text_prompt": "people", "window": 96, "encoder_size": 64,
                        "normalisation": "clip"},
            "licence": "MIT (test)", "attribution": "test",
            "card": {"scenes": ["anything named by the prompt"]}}})
    return reg, clip, state


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")  # OpenAI's files are TorchScript
def test_clip_count_pulls_its_frozen_towers_and_counts_with_the_official_strip(
        count_release: tuple[Registry, Any, dict[str, Any]], home: Path) -> None:
    reg, clip, state = count_release
    path = pull("tiny-count", registry=reg)
    towers = converted_path(reg.get("tiny-openclip"), home)
    assert towers.is_file() and status(reg.get("tiny-openclip"), home) == "converted"
    model, meta = load_checkpoint(path)
    assert model.spec.pretrained == str(towers) and model.spec.window == (96, 96)
    assert_all_landed(model, state, prefix_map="model.")
    torch.testing.assert_close(model.img_encoder.vit.conv1.weight, clip.visual.conv1.weight)
    img = np.random.default_rng(1).integers(0, 255, (120, 200, 3), dtype=np.uint8)
    dm = predict(model, img, tiling="clip_count")
    assert dm.map.shape == (96, 160) and np.isfinite(dm.count)
    assert card_of(path).scenes == ("anything named by the prompt",)
    hashes = json.loads((home / "hashes.json").read_text())
    assert set(hashes) == {"openai-tiny.pt", "count.ckpt"}


# -- the run config: model.name pulls on first use ------------------------------------------------


def _app_config(tmp_path: Path, model: dict[str, Any]) -> Any:
    from pipeline.config import config_from_dict

    return config_from_dict({"cameras": {"a": {"url": "a.mp4"}}, "model": model},
                            base_dir=tmp_path)


def test_run_config_model_name_pulls_on_first_use(
        ebc_release: tuple[Registry, dict[str, Any], bytes], server: FileServer, tmp_path: Path,
        home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.stages.inference import choose_model, describe_model

    monkeypatch.setenv("CROWDSTREAM_REGISTRY", str(ebc_release[0].path))
    choice = choose_model(_app_config(tmp_path, {"name": "tiny-ebc"}))
    assert choice.source == str(home / "tiny-ebc.pt") and choice.random_init is None
    assert describe_model(choice) == {"name": "tiny-ebc", "scenes": "unit tests"}
    n = len(server.requests)
    assert choose_model(_app_config(tmp_path, {"name": "tiny-ebc"})).source == choice.source
    assert len(server.requests) == n  # converted once, reused
    with pytest.raises(ConfigError, match=r"model\.name: cannot use .*unknown model 'tiny-ebd'.*did you mean tiny-ebc"):
        choose_model(_app_config(tmp_path, {"name": "tiny-ebd"}))
    with pytest.raises(ConfigError, match="model.name: set one of"):
        choose_model(_app_config(tmp_path, {"name": "tiny-ebc", "checkpoint": "x.pt"}))


def test_run_config_names_a_failed_download(server: FileServer, tmp_path: Path, home: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.stages.inference import choose_model

    reg = write_registry(tmp_path / "r.yaml", {"gone": ebc_entry(server.url("/missing.tgz"))})
    monkeypatch.setenv("CROWDSTREAM_REGISTRY", str(reg.path))
    with pytest.raises(ConfigError, match=r"model\.name: cannot use the released model 'gone': "
                                          r"gone: download failed: HTTP 404"):
        choose_model(_app_config(tmp_path, {"name": "gone"}))


# -- the command line -----------------------------------------------------------------------------


def cli(*argv: str) -> int:
    from pipeline.cli import main

    return main(list(argv))


def test_models_command_lists_pulls_and_describes(
        ebc_release: tuple[Registry, dict[str, Any], bytes], home: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    reg = str(ebc_release[0].path)
    assert cli("models", "--registry", reg, "list") == 0
    out = capsys.readouterr().out
    assert "tiny-ebc" in out and "not pulled" in out and "127.0.0.1" in out
    assert cli("models", "--registry", reg, "pull", "tiny-ebc", "--quiet") == 0
    assert capsys.readouterr().out.strip() == str(home / "tiny-ebc.pt")
    assert cli("models", "--registry", reg, "info", "tiny-ebc") == 0
    out = capsys.readouterr().out
    assert "status: converted" in out and "dataset=sha" in out and "card: tiny-ebc" in out
    assert cli("models", "info", str(home / "tiny-ebc.pt")) == 0
    out = capsys.readouterr().out
    assert "spec: tiny-ebc: clip_ebc" in out and "meant for:\n    - unit tests" in out
    assert cli("models", "--registry", reg, "pull", "nope") == 1
    assert "unknown model 'nope'" in capsys.readouterr().err


def test_convert_refuses_without_a_data_set_and_takes_a_registry_entry(
        ebc_release: tuple[Registry, dict[str, Any], bytes], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    reg, state, _data = ebc_release
    src = tmp_path / "best_mae_0.pth"
    torch.save(state, src)
    assert cli("models", "convert", "ebc", str(src), str(tmp_path / "out.pt")) == 1
    err = capsys.readouterr().err
    assert "give --dataset (sha, shb, nwpu, qnrf, jhu)" in err and not (tmp_path / "out.pt").exists()
    assert cli("models", "--registry", str(reg.path), "convert", "ebc", str(src),
               str(tmp_path / "out.pt"), "--entry", "tiny-ebc") == 0
    model, meta = load_checkpoint(tmp_path / "out.pt")
    assert model.spec.dataset == "sha" and meta["card"]["name"] == "tiny-ebc"
    assert "--entry tiny-ebc" in meta["card"]["command"]


# -- the shipped registry -------------------------------------------------------------------------


def test_the_shipped_registry_is_complete_and_documented() -> None:
    from engines.models.hub import CountArgs, EbcArgs, entry_spec

    reg = Registry.load(Path(__file__).resolve().parent.parent / "engines/models/registry.yaml")
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    anchors = {"sha": 4.29992, "shb": 4.41009, "nwpu": 4.21931, "qnrf": 4.21937}
    for name, e in reg.entries.items():
        assert e.licence and e.attribution and e.source.page, name
        assert f"`{name}`" in readme, f"{name} is not documented in the README"
        assert e.status or e.args is not None, name
        for key in ("trained_on", "scenes", "not_for"):  # a comma in a YAML [a, b] list splits
            for item in e.card.get(key, []):
                assert item.count("(") == item.count(")"), (name, key, item)
        if isinstance(e.args, EbcArgs):
            ds = name.split("-")[3]  # clip-ebc-<backbone>-<data set>[-rmse]
            assert e.args.dataset == ds, name
            assert entry_spec(e).anchors[-1] == pytest.approx(anchors[ds]), name
        if isinstance(e.args, CountArgs):
            assert reg.get(e.args.pretrained.model).family == "open_clip"
    assert reg.get("clip-ebc-vitb16-nwpu").layout.member == ("best_mae_0.pth",)
    with pytest.raises(HubError, match="listed but cannot be pulled: unsupported"):
        pull("zip-b-sha", registry=reg)


def test_a_registry_entry_missing_a_conversion_argument_is_an_error(tmp_path: Path) -> None:
    entry = ebc_entry("http://127.0.0.1/x.tgz")
    del entry["convert"]["dataset"]
    with pytest.raises(ConfigError, match=r"models\.tiny\.convert\.dataset: required key is missing"):
        write_registry(tmp_path / "r.yaml", {"tiny": entry})
