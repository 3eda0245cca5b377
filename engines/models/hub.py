"""Released models by name: a registry (data), verified downloads, conversion into our format.

The registry (``engines/models/registry.yaml``, or ``--registry FILE`` / ``$CROWDSTREAM_REGISTRY``)
lists the authors' released checkpoints with their source, archive layout, SHA-256 and every
conversion argument. :func:`pull` downloads one (progress, HTTP Range resume of a partial file,
retries, atomic rename), checks its SHA-256 (the registry's, or the one recorded on the first
download in the user's cache: a file that differs later is refused), takes the checkpoint out of
its archive and converts it with ``engines.models.official`` into one of our self-describing
checkpoints, with a model card. Everything lives under ``engines.paths.models_dir()``
(``$CROWDSTREAM_HOME/models``)::

    downloads/<file>          the verified original file (<file>.part while downloading)
    hashes.json               SHA-256 recorded per downloaded file on its first download
    <name>.pt                 the converted checkpoint (open_clip entries: a plain state dict)

Example::

    registry = Registry.load()
    path = pull("clip-ebc-vitb16-nwpu", progress=TextProgress("clip-ebc-vitb16-nwpu"))
    model, meta = load_checkpoint(path)
    resolve("clip-ebc-vitb16-nwpu")   # the converted file, pulled first if it is not there yet
"""

from __future__ import annotations

import difflib
import fnmatch
import http.client
import json
import os
import shutil
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Literal

from engines.log import get_logger
from engines.modelcard import Figure, ModelCard
from engines.paths import models_dir
from engines.yamlconfig import (
    ConfigError,
    ConfigModel,
    Frozen,
    FrozenDict,
    Items,
    load_section,
    read_yaml,
)

log = get_logger("hub")

REGISTRY_ENV = "CROWDSTREAM_REGISTRY"
DEFAULT_REGISTRY = Path(__file__).with_name("registry.yaml")
USER_AGENT = "crowdstream-models/1"
CHUNK = 1 << 20

Progress = Callable[[int, int | None], None]  # (bytes done, total bytes or None)


class HubError(RuntimeError):
    """A model cannot be pulled or converted; the message says why and what to do."""


class HashMismatch(HubError):
    """A downloaded file's SHA-256 differs from the expected one."""


class LayoutError(HubError):
    """A downloaded file is not laid out as its registry entry says."""


# -- the registry (typed, validated data) ----------------------------------------------------------


class Source(ConfigModel):
    """Where the file comes from; ``sha256`` null = recorded on first download."""

    urls: Items[str] = ()
    page: str = ""
    file: str | None = None
    sha256: str | None = None
    size_bytes: int | None = None


class Layout(ConfigModel):
    """How the checkpoint sits in the downloaded file."""

    format: Literal["ebc_state_dict", "count_lightning", "openai_jit", "state_dict",
                    "ebc_zip_checkpoint"]
    archive: Literal["none", "tgz", "zip", "auto"] = "none"
    member: Items[str] = ()


class EbcArgs(ConfigModel):
    """Every argument of a CLIP-EBC conversion (the files hold weights only)."""

    backbone: str | dict[str, Any]
    dataset: str
    truncation: int
    granularity: Literal["fine"]
    anchor_type: Literal["average"]
    block_size: Literal[8]
    prompt_type: Literal["word", "number"]
    window: int
    num_vpt: int
    deep_vpt: bool
    normalisation: Literal["imagenet"]
    eval_whole_image: bool = False


class PretrainedRef(ConfigModel):
    """Frozen towers from another registry entry (pulled first)."""

    model: str


class CountArgs(ConfigModel):
    """Every argument of a CLIP-Count conversion (the frozen CLIP towers come from ``pretrained``:
    another entry, an open_clip tag or a local file)."""

    backbone: str | dict[str, Any]
    pretrained: PretrainedRef | str
    heads: int
    vpt_width: int
    vpt_depth: int
    n_ctx: int
    text_prompt: str
    window: int
    encoder_size: int
    normalisation: Literal["clip"]
    eval_tiling: Literal["clip_count", "plain"] = "clip_count"


class OpenClipArgs(ConfigModel):
    """An open_clip backbone by pretrained tag (``backbone`` may be an inline config in tests)."""

    backbone: str | dict[str, Any]
    tag: str
    quick_gelu: bool


_ARGS = {"clip_ebc": EbcArgs, "clip_count": CountArgs, "open_clip": OpenClipArgs}


class Entry(ConfigModel):
    """One registry entry (see the header of ``registry.yaml`` for the meaning of each key)."""

    title: str
    family: Literal["clip_ebc", "clip_count", "open_clip", "ebc_zip"]
    source: Source
    layout: Layout
    convert: Frozen[str, Any]
    licence: str
    attribution: str
    card: Frozen[str, Any] = FrozenDict()
    status: str = ""  # non-empty: listed but not pullable, and why
    notes: Items[str] = ()
    verified: Frozen[str, str] = FrozenDict()
    name: str = ""  # filled from the registry key
    args: Any = None  # the typed convert arguments (EbcArgs / CountArgs / OpenClipArgs)

    @property
    def file_name(self) -> str:
        """The name of the downloaded file in the cache."""
        if self.source.file:
            return self.source.file
        if self.source.urls:
            tail = self.source.urls[0].split("?")[0].rstrip("/").rsplit("/", 1)[-1]
            if tail:
                return tail
        return f"{self.name}.download"


@dataclass(frozen=True)
class Registry:
    """The registry file's entries, validated (an error names the file and the key)."""

    path: Path
    entries: dict[str, Entry]

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None) -> Registry:
        """``path``, else ``$CROWDSTREAM_REGISTRY``, else the registry shipped with crowdstream."""
        p = Path(path or os.environ.get(REGISTRY_ENV) or DEFAULT_REGISTRY).expanduser()
        raw = read_yaml(p)
        if raw.get("version") != 1:
            raise ConfigError(p, "version", f"expected 1, got {raw.get('version')!r}")
        models = raw.get("models")
        if not isinstance(models, dict) or not models:
            raise ConfigError(p, "models", "expected a mapping of model names to entries")
        return cls(p, {str(n): _entry(p, str(n), e) for n, e in models.items()})

    def get(self, name: str) -> Entry:
        """The entry ``name``; an unknown name is an error listing close and known names."""
        if name in self.entries:
            return self.entries[name]
        close = difflib.get_close_matches(name, list(self.entries), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise HubError(f"unknown model {name!r} in {self.path}{hint}; known: "
                       f"{', '.join(sorted(self.entries))} (see `crowdstream models list`)")


def _entry(path: Path, name: str, data: Any) -> Entry:
    key = f"models.{name}"
    if isinstance(data, dict) and {"name", "args"} & set(data):
        raise ConfigError(path, key, "'name' and 'args' are set by crowdstream, not the registry")
    entry = load_section(Entry, data, file=str(path), key=key)
    args = None
    if entry.family in _ARGS and not entry.status:
        args = load_section(_ARGS[entry.family], dict(entry.convert), file=str(path),
                            key=f"{key}.convert")
    if entry.layout.archive != "none" and not entry.layout.member:
        raise ConfigError(path, f"{key}.layout.member",
                          f"archive {entry.layout.archive} needs member patterns")
    sha = entry.source.sha256
    if sha is not None and (len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha)):
        raise ConfigError(path, f"{key}.source.sha256", "expected 64 lower-case hex digits or null")
    entry = entry.model_copy(update={"name": name, "args": args})
    try:
        entry_card(entry, "")
    except (TypeError, ValueError) as e:
        raise ConfigError(path, f"{key}.card", str(e)) from None
    return entry


# -- progress ------------------------------------------------------------------------------------


class TextProgress:
    """A download progress display on a terminal (one refreshed line), or a line per 10 % when
    the stream is not a terminal (logs, CI)."""

    def __init__(self, label: str, stream: IO[str] | None = None, every_s: float = 0.25) -> None:
        self.label, self.stream, self.every_s = label, stream or sys.stderr, every_s
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.t0 = time.monotonic()
        self.last = 0.0
        self.last_decile = -1
        self.first: int | None = None

    def __call__(self, done: int, total: int | None) -> None:
        now = time.monotonic()
        if self.first is None:
            self.first = done  # a resumed download starts here: the rate counts new bytes only
        if total and done >= total:
            self._line(done, total, now, final=True)
            return
        if self.tty and now - self.last >= self.every_s:
            self._line(done, total, now)
        elif not self.tty and total:
            decile = int(10 * done / total)
            if decile > self.last_decile:
                self.last_decile = decile
                self._line(done, total, now)

    def _line(self, done: int, total: int | None, now: float, final: bool = False) -> None:
        self.last = now
        rate = (done - (self.first or 0)) / max(now - self.t0, 1e-6) / 1e6
        size = f"{done / 1e6:.1f}/{total / 1e6:.1f} MB {100 * done / total:5.1f}%" if total \
            else f"{done / 1e6:.1f} MB"
        eta = ""
        if total and rate > 0 and not final:
            eta = f" ETA {int((total - done) / 1e6 / rate)} s"
        text = f"{self.label}: {size} {rate:.1f} MB/s{eta}"
        if self.tty:
            self.stream.write("\r" + text.ljust(72) + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


# -- downloading -----------------------------------------------------------------------------------


class _Retry(Exception):
    """A transient failure: the partial file is kept and the download resumes from it."""


def download(url: str, dest: str | os.PathLike[str], *, progress: Progress | None = None,
             retries: int = 3, timeout: float = 60.0, backoff_s: float = 1.0) -> Path:
    """Download ``url`` to ``dest`` atomically: into ``dest.part`` (resumed with an HTTP Range
    request when it exists, from an earlier attempt or an earlier run), renamed when complete.

    Dropped connections and 5xx answers are retried ``retries`` times (backoff doubling from
    ``backoff_s``); the partial file is kept for the next call when all fail. An HTML page where a
    model file was expected (a login, quota or confirmation page) is an error, not a file.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    for attempt in range(retries + 1):
        try:
            _fetch_once(url, part, progress, timeout)
            os.replace(part, dest)
            return dest
        except _Retry as e:
            if attempt == retries:
                have = part.stat().st_size if part.exists() else 0
                raise HubError(f"download of {_safe(url)} failed after {attempt + 1} attempts "
                               f"({e}); {have} bytes are kept in {part} and the next pull "
                               f"resumes from there") from None
            log.warning("download interrupted, resuming", url=_safe(url), error=str(e),
                        attempt=attempt + 1)
            time.sleep(backoff_s * 2 ** attempt)
    raise AssertionError("unreachable")


def _safe(url: str) -> str:
    from engines.video import redact_url

    return redact_url(url)


def _open(url: str, have: int, timeout: float) -> Any:
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if have:
        req.add_header("Range", f"bytes={have}-")
    try:
        return urllib.request.urlopen(req, timeout=timeout)  # noqa: S310 (http/https only, below)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:
            return e  # the partial file may already be complete: checked by the caller
        if e.code in (408, 425, 429) or e.code >= 500:
            raise _Retry(f"HTTP {e.code}") from None
        raise HubError(f"HTTP {e.code} {e.reason} for {_safe(url)}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        raise _Retry(str(getattr(e, "reason", e))) from None


def _fetch_once(url: str, part: Path, progress: Progress | None, timeout: float) -> None:
    if not url.startswith(("http://", "https://")):
        raise HubError(f"only http(s) URLs can be pulled, got {_safe(url)}")
    have = part.stat().st_size if part.exists() else 0
    resp = _open(url, have, timeout)
    with resp:
        if getattr(resp, "code", None) == 416:
            total = _total_from_range(resp.headers.get("Content-Range", ""))
            if total == have:
                return  # complete already
            part.unlink()  # the server's file is shorter than our part: start over
            raise _Retry("the partial file does not fit the server's file; starting over")
        start, total = _start_and_total(resp, have)
        if start == 0 and have:
            log.info("server ignored the range request; downloading from the start", url=_safe(url))
        _copy_body(resp, part, start, total, progress, url)


def _total_from_range(header: str) -> int | None:
    tail = header.rsplit("/", 1)[-1].strip()
    return int(tail) if tail.isdigit() else None


def _start_and_total(resp: Any, have: int) -> tuple[int, int | None]:
    """Where the body starts in the file, and the file's full size (None if unknown)."""
    if resp.status == 206:
        rng = resp.headers.get("Content-Range", "")  # "bytes 100-999/1000"
        try:
            first = int(rng.split()[1].split("-")[0])
        except (IndexError, ValueError):
            raise _Retry(f"unreadable Content-Range {rng!r}") from None
        if first != have:
            raise _Retry(f"server resumed at byte {first}, expected {have}")
        return have, _total_from_range(rng)
    length = resp.headers.get("Content-Length")
    return 0, int(length) if length and length.isdigit() else None


def _copy_body(resp: Any, part: Path, start: int, total: int | None,
               progress: Progress | None, url: str) -> None:
    done = start
    with open(part, "ab" if start else "wb") as f:
        while True:
            try:
                chunk = resp.read(CHUNK)
            except (OSError, http.client.HTTPException) as e:
                raise _Retry(f"connection lost at byte {done}: {e}") from None
            if not chunk:
                break
            if done == 0 and _looks_like_html(chunk, resp.headers.get("Content-Type", "")):
                raise HubError(f"{_safe(url)} answered with an HTML page, not a model file "
                               "(a login, quota or confirmation page); download the file in a "
                               "browser and pass it with --file")
            f.write(chunk)
            done += len(chunk)
            if progress is not None:
                progress(done, total)
    if total is not None and done < total:
        raise _Retry(f"connection closed at byte {done} of {total}")


def _looks_like_html(head: bytes, content_type: str) -> bool:
    start = head[:512].lstrip().lower()
    return "text/html" in content_type.lower() or start.startswith((b"<!doctype html", b"<html"))


# -- hashes ----------------------------------------------------------------------------------------


class HashBook:
    """SHA-256 recorded per downloaded file (``hashes.json`` in the models folder)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> dict[str, dict[str, Any]]:
        if not self.path.is_file():
            return {}
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError) as e:
            raise HubError(f"{self.path}: unreadable hash records ({e}); fix or delete it") from None
        return data if isinstance(data, dict) else {}

    def get(self, file: str) -> dict[str, Any] | None:
        return self.read().get(file)

    def record(self, file: str, sha256: str, origin: str) -> None:
        data = self.read()
        data[file] = {"sha256": sha256, "origin": origin,
                      "recorded": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, self.path)


def verify(entry: Entry, path: Path, book: HashBook, origin: str) -> str:
    """The file's SHA-256, checked against the registry's or the recorded one (recorded here on
    first sight). A mismatch is refused: the file is moved aside to ``<file>.rejected``."""
    from engines.checkpoint import file_hash

    actual = file_hash(path)
    expected, where = entry.source.sha256, f"the registry {entry.name} entry"
    seen = book.get(entry.file_name)
    if not expected and seen:
        expected, where = seen["sha256"], f"recorded on its first download ({seen['recorded']})"
    if expected and actual != expected.lower():
        rejected = path
        if path.parent == book.path.parent / "downloads":
            rejected = path.with_name(path.name + ".rejected")
            os.replace(path, rejected)
        raise HashMismatch(
            f"refusing {path.name} for {entry.name}: its SHA-256 is {actual}, expected "
            f"{expected} ({where}). The file is corrupted or was replaced upstream; it was kept "
            f"as {rejected}. Pull again to download it anew; if the publisher really replaced "
            f"it, delete its record in {book.path} first.")
    if not seen or seen.get("sha256") != actual:
        book.record(entry.file_name, actual, origin)
    return actual


# -- archives --------------------------------------------------------------------------------------


def _archive_kind(entry: Entry, path: Path) -> str:
    kind = entry.layout.archive
    if kind != "auto":
        return kind
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:2] == b"\x1f\x8b" or tarfile.is_tarfile(path):
        return "tgz"
    if head == b"PK\x03\x04" and not _is_torch_file(path):
        return "zip"
    return "none"


def _is_torch_file(path: Path) -> bool:
    """``torch.save`` files are zip archives too: one top folder holding ``data.pkl``."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except zipfile.BadZipFile:
        return False
    tops = {n.split("/", 1)[0] for n in names}
    return len(tops) == 1 and f"{tops.pop()}/data.pkl" in names


def _pick(entry: Entry, names: list[str], archive: Path) -> str:
    for pattern in entry.layout.member:
        hits = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if len(hits) == 1:
            return hits[0]
    shown = ", ".join(names[:12]) + (f" (+{len(names) - 12} more)" if len(names) > 12 else "")
    raise LayoutError(
        f"{entry.name}: {archive.name} has no single member matching the registry's layout "
        f"(archive {entry.layout.archive}, member {' | '.join(entry.layout.member)}); it holds: "
        f"{shown or 'no files'}. The registry entry's layout does not fit this file.")


def extract(entry: Entry, path: Path, workdir: Path) -> Path:
    """The checkpoint inside ``path`` per the entry's layout (``path`` itself when not an
    archive), copied into ``workdir``. Members are streamed out one by one, never unpacked
    wholesale, so archive paths cannot escape ``workdir``."""
    kind = _archive_kind(entry, path)
    if kind == "none":
        return path
    want = f"(the registry's layout for {entry.name} says archive {kind})"
    if kind == "tgz":
        try:
            with tarfile.open(path, "r:*") as tf:
                members = {m.name: m for m in tf.getmembers() if m.isfile()}
                name = _pick(entry, sorted(members), path)
                src = tf.extractfile(members[name])
                return _copy_out(src, workdir, name)
        except tarfile.TarError as e:
            raise LayoutError(f"{entry.name}: {path.name} is not a readable tar archive {want}: "
                              f"{e}") from None
    try:
        with zipfile.ZipFile(path) as zf:
            names = sorted(i.filename for i in zf.infolist() if not i.is_dir())
            name = _pick(entry, names, path)
            with zf.open(name) as src:
                return _copy_out(src, workdir, name)
    except zipfile.BadZipFile as e:
        raise LayoutError(f"{entry.name}: {path.name} is not a readable zip archive {want}: "
                          f"{e}") from None


def _copy_out(src: IO[bytes] | None, workdir: Path, name: str) -> Path:
    if src is None:
        raise LayoutError(f"archive member {name} cannot be read")
    out = workdir / Path(name).name
    with src, open(out, "wb") as f:
        shutil.copyfileobj(src, f, CHUNK)
    return out


# -- conversion ------------------------------------------------------------------------------------


def entry_card(entry: Entry, source: str) -> ModelCard:
    """The model card of a model pulled for ``entry`` from ``source`` (URL or file name)."""
    c = entry.card
    return ModelCard(name=entry.name, summary=c.get("summary", entry.title),
                     trained_on=tuple(c.get("trained_on", ())), recipe=c.get("recipe", ""),
                     command=f"crowdstream models pull {entry.name}",
                     figures=tuple(Figure.from_dict(f) for f in c.get("figures", ())),
                     scenes=tuple(c.get("scenes", ())), not_for=tuple(c.get("not_for", ())),
                     licence=entry.licence, attribution=entry.attribution, source=source)


def entry_spec(entry: Entry, pretrained: str | None = None) -> Any:
    """The ``ModelSpec`` the entry's conversion arguments describe (clip_ebc / clip_count)."""
    from engines.models.official import official_count_spec, official_ebc_spec

    a = entry.args
    if isinstance(a, EbcArgs):
        return official_ebc_spec(a.backbone, a.dataset, a.truncation, a.window, a.num_vpt,
                                 a.prompt_type, a.deep_vpt, name=entry.name)
    if isinstance(a, CountArgs):
        return official_count_spec(pretrained, heads=a.heads, vpt_width=a.vpt_width,
                                   vpt_depth=a.vpt_depth, n_ctx=a.n_ctx,
                                   text_prompt=a.text_prompt, backbone=a.backbone,
                                   window=a.window, encoder_size=a.encoder_size, name=entry.name)
    raise HubError(f"{entry.name}: a {entry.family} entry has no counting-model spec")


def _metadata(entry: Entry, origin: str, sha256: str) -> dict[str, Any]:
    return {"source": origin, "source_file": entry.file_name, "source_sha256": sha256,
            "registry_entry": entry.name, "converted_by": "crowdstream models pull"}


def convert(entry: Entry, src: Path, dst: Path, *, sha256: str, origin: str,
            registry: Registry, cache: Path, progress_for: Callable[[str], Progress | None]
            ) -> Path:
    """Convert the downloaded (and verified) file ``src`` per ``entry`` into ``dst``."""
    from engines.checkpoint import save_checkpoint
    from engines.models.official import OfficialCheckpointError, load_official

    with tempfile.TemporaryDirectory(prefix="extract-", dir=cache) as tmp:
        ckpt = extract(entry, src, Path(tmp))
        if entry.family == "open_clip":
            return _convert_open_clip(entry, ckpt, dst)
        pretrained = None
        if isinstance(entry.args, CountArgs):
            ref = entry.args.pretrained
            pretrained = str(pull(ref.model, registry=registry, cache=cache,
                                  progress_for=progress_for)) if isinstance(ref, PretrainedRef) \
                else ref
        spec = entry_spec(entry, pretrained)
        try:
            model = load_official(ckpt, spec)
        except (OfficialCheckpointError, FileNotFoundError) as e:
            raise HubError(f"{entry.name}: the file does not convert with the registry's "
                           f"arguments: {e}") from None
        return save_checkpoint(dst, model, _metadata(entry, origin, sha256),
                               card=entry_card(entry, origin))


def _convert_open_clip(entry: Entry, ckpt: Path, dst: Path) -> Path:
    """open_clip weights: an OpenAI TorchScript archive becomes a plain state dict (``dst``);
    a plain state dict is used where it is. Both are loaded strictly into the architecture."""
    import torch

    a: OpenClipArgs = entry.args
    if entry.layout.format == "openai_jit":
        try:
            with warnings.catch_warnings():  # TorchScript is deprecated; OpenAI's files are it
                warnings.simplefilter("ignore", FutureWarning)
                scripted = torch.jit.load(str(ckpt), map_location="cpu")
        except RuntimeError as e:
            raise LayoutError(f"{entry.name}: {ckpt.name} is not a TorchScript archive (the "
                              f"registry's layout says openai_jit): {e}") from None
        drop = ("input_resolution", "context_length", "vocab_size")
        state = {k: v for k, v in scripted.state_dict().items()
                 if k not in drop and not k.endswith("attn_mask")}
        out = dst
    else:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state)
        out = ckpt
    _check_open_clip(entry, a, state)
    if out is dst:
        tmp = dst.with_name(dst.name + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, dst)
    return out


def _check_open_clip(entry: Entry, a: OpenClipArgs, state: dict[str, Any]) -> None:
    import open_clip

    if isinstance(a.backbone, dict):
        cfg = {k: v for k, v in a.backbone.items() if k != "name"}
        model = open_clip.model.CLIP(**cfg, quick_gelu=a.quick_gelu)
    else:
        model = open_clip.create_model(a.backbone, pretrained=None, force_quick_gelu=a.quick_gelu)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise HubError(f"{entry.name}: the weights do not fit open_clip {a.backbone if isinstance(a.backbone, str) else 'inline backbone'}: "
                       f"{str(e)[:600]}") from None


# -- pull / resolve --------------------------------------------------------------------------------


def converted_path(entry: Entry, cache: Path | None = None) -> Path:
    """Where the entry's usable file is: ``<name>.pt``, or for plain open_clip state dicts the
    verified download itself."""
    cache = cache or models_dir()
    if entry.family == "open_clip" and entry.layout.format == "state_dict" \
            and entry.layout.archive == "none":
        return cache / "downloads" / entry.file_name
    return cache / f"{entry.name}.pt"


def status(entry: Entry, cache: Path | None = None) -> str:
    """``converted``, ``downloaded``, ``partial``, ``not pulled`` or ``not convertible``."""
    cache = cache or models_dir()
    if entry.status:
        return "not convertible"
    if converted_path(entry, cache).is_file():
        return "converted"
    dl = cache / "downloads" / entry.file_name
    if dl.is_file():
        return "downloaded"
    return "partial" if dl.with_name(dl.name + ".part").is_file() else "not pulled"


def _obtain(entry: Entry, cache: Path, book: HashBook, local_file: str | os.PathLike[str] | None,
            progress: Progress | None, retries: int) -> tuple[Path, str, str]:
    """(verified file, its sha256, where it came from)."""
    if local_file is not None:
        src = Path(local_file).expanduser()
        if not src.is_file():
            raise HubError(f"--file {src}: no such file")
        return src, verify(entry, src, book, f"local file {src.name}"), f"local file {src.name}"
    if not entry.source.urls:
        how = " ".join(entry.notes) or (f"Download it and run `crowdstream models pull "
                                        f"{entry.name} --file FILE`.")
        raise HubError(f"{entry.name}: no download URL on record (page: {entry.source.page}). "
                       f"{how}")
    dl = cache / "downloads" / entry.file_name
    errors = []
    for url in entry.source.urls if not dl.is_file() else []:
        try:
            download(url, dl, progress=progress, retries=retries)
            break
        except HubError as e:
            errors.append(str(e))
    if not dl.is_file():
        raise HubError(f"{entry.name}: download failed: {'; '.join(errors)} (release page: "
                       f"{entry.source.page})")
    return dl, verify(entry, dl, book, entry.source.urls[0]), entry.source.urls[0]


def pull(name: str, *, registry: Registry | None = None, cache: str | os.PathLike[str] | None = None,
         local_file: str | os.PathLike[str] | None = None, force: bool = False,
         progress_for: Callable[[str], Progress | None] | None = None, retries: int = 3) -> Path:
    """Download (or take ``local_file``), verify and convert the model ``name``; returns the
    usable file. An up-to-date converted file (same source SHA-256) is kept unless ``force``.

    ``progress_for(label)`` makes the progress display of each download (this entry's and, for
    CLIP-Count, its frozen towers').
    """
    registry = registry or Registry.load()
    root = Path(cache).expanduser() if cache else models_dir()
    root.mkdir(parents=True, exist_ok=True)
    entry = registry.get(name)
    if entry.status:
        raise HubError(f"{name} is listed but cannot be pulled: {entry.status} (weights: "
                       f"{entry.source.page})")
    book = HashBook(root / "hashes.json")
    progress_for = progress_for or (lambda _label: None)
    src, sha, origin = _obtain(entry, root, book, local_file, progress_for(name), retries)
    dst = converted_path(entry, root)
    if dst.is_file() and not force and _up_to_date(entry, dst, sha):
        log.info("model up to date", model=name, file=str(dst))
        return dst
    log.info("converting", model=name, source=origin)
    out = convert(entry, src, dst, sha256=sha, origin=origin, registry=registry, cache=root,
                  progress_for=progress_for)
    log.info("model ready", model=name, file=str(out))
    return out


def _up_to_date(entry: Entry, dst: Path, sha: str) -> bool:
    if entry.family == "open_clip":
        return True  # the verified download itself, or its state dict converted from it
    from engines.checkpoint import read_metadata

    try:
        return read_metadata(dst).get("source_sha256") == sha
    except (ValueError, FileNotFoundError):
        return False


def resolve(name: str, *, registry: Registry | None = None,
            cache: str | os.PathLike[str] | None = None,
            progress_for: Callable[[str], Progress | None] | None = None) -> Path:
    """The usable file of ``name``: the converted file when present (nothing is read or
    hashed), else :func:`pull` it."""
    registry = registry or Registry.load()
    root = Path(cache).expanduser() if cache else models_dir()
    dst = converted_path(registry.get(name), root)
    if dst.is_file():
        return dst
    return pull(name, registry=registry, cache=root, progress_for=progress_for)
