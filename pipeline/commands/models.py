"""``crowdstream models list | info NAME|FILE | pull NAME | convert | card``: released models.

``list`` shows the registry (``engines/models/registry.yaml``; ``--registry FILE`` or
``$CROWDSTREAM_REGISTRY`` for another) and what is in the cache; ``info`` prints an entry (source,
layout, conversion arguments, licence) or a checkpoint / engine file (spec summary and model
card); ``pull`` downloads, verifies and converts into the cache (``$CROWDSTREAM_HOME/models``);
``convert`` turns an official file you already have into our checkpoint; ``card`` writes a model
card into a checkpoint, keeping its weights bit for bit.

Example::

    crowdstream models list
    crowdstream models pull clip-ebc-vitb16-nwpu
    crowdstream models info clip-ebc-vitb16-nwpu
    crowdstream models convert ebc best_mae_0.pth nwpu.pt --backbone ViT-B-16 --dataset nwpu
    crowdstream models card configs/demo/mall_demo_model.pt --from configs/demo/mall_demo_model.card.yaml
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--registry", default=None,
                   help="registry file (default: $CROWDSTREAM_REGISTRY or the shipped one)")
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    ls = sub.add_parser("list", help="the registry's models and what is in the cache")
    ls.add_argument("--json", action="store_true", help="as JSON")
    info = sub.add_parser("info", help="a registry entry, or a checkpoint / engine file's card")
    info.add_argument("target", metavar="NAME|FILE")
    pull = sub.add_parser("pull", help="download, verify and convert a registry model")
    pull.add_argument("name")
    pull.add_argument("--file", default=None,
                      help="use this local copy of the released file instead of downloading")
    pull.add_argument("--force", action="store_true", help="convert again even if up to date")
    pull.add_argument("--quiet", action="store_true", help="no progress display")
    _configure_convert(sub.add_parser("convert", help="convert an official checkpoint you have"))
    card = sub.add_parser("card", help="write a model card into a checkpoint (weights unchanged)")
    card.add_argument("checkpoint")
    card.add_argument("--from", dest="card_file", required=True, metavar="CARD.yaml",
                      help="YAML with the card's fields (name, trained_on, figures, ...)")
    card.add_argument("--out", default=None, help="write here instead of in place")


def _configure_convert(c: argparse.ArgumentParser) -> None:
    c.add_argument("kind", choices=["ebc", "count"], help="CLIP-EBC best_*.pth or CLIP-Count .ckpt")
    c.add_argument("src")
    c.add_argument("dst")
    c.add_argument("--entry", default=None, metavar="NAME",
                   help="take every conversion argument from this registry entry")
    c.add_argument("--backbone", default=None, help="open_clip name (ebc default ViT-B-16)")
    c.add_argument("--dataset", default=None,
                   help="ebc: data set whose anchors the model was trained with: sha, shb, nwpu, "
                        "qnrf, jhu (required: the files do not record it)")
    c.add_argument("--truncation", type=int, default=4)
    c.add_argument("--window", type=int, default=None)
    c.add_argument("--num-vpt", type=int, default=None)
    c.add_argument("--prompt-type", choices=["word", "number"], default="word")
    c.add_argument("--pretrained", default="openai",
                   help="count: frozen CLIP weights, an open_clip tag or a local file")
    c.add_argument("--text-prompt", default="people")
    c.add_argument("--spec", default=None,
                   help="a JSON ModelSpec (ModelSpec.to_dict()) to use instead of the presets")


def _fail(action: str, message: str, code: int = 1) -> int:
    print(f"crowdstream models {action}: {message}", file=sys.stderr)
    return code


def main(args: argparse.Namespace) -> int:
    from engines.models.hub import HubError
    from engines.models.official import OfficialCheckpointError

    handlers = {"list": _list, "info": _info, "pull": _pull, "convert": _convert,
                "card": _write_card}
    try:
        return handlers[args.action](args)
    except (HubError, OfficialCheckpointError, FileNotFoundError, ValueError) as e:
        return _fail(args.action, str(e))


# -- list / info -----------------------------------------------------------------------------------


def _host(entry: Any) -> str:
    from urllib.parse import urlparse

    if entry.source.urls:
        return urlparse(entry.source.urls[0]).netloc
    return "manual (--file)" if not entry.status else "-"


def _list(args: argparse.Namespace) -> int:
    from engines.models.hub import Registry, status

    reg = Registry.load(args.registry)
    rows = [{"name": n, "family": e.family, "status": status(e), "source": _host(e),
             "licence": e.licence.split(" (")[0].split(".")[0], "title": e.title}
            for n, e in reg.entries.items()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    cols = ("name", "family", "status", "source", "licence")
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    print("  ".join(c.upper().ljust(widths[c]) for c in cols))
    for r in rows:
        print("  ".join(str(r[c]).ljust(widths[c]) for c in cols))
    print(f"\nregistry: {reg.path}; `crowdstream models info NAME` for details")
    return 0


def _info(args: argparse.Namespace) -> int:
    path = Path(args.target).expanduser()
    if path.is_file():
        print(describe_file(path))
        return 0
    from engines.models.hub import Registry

    print(describe_entry(Registry.load(args.registry), args.target))
    return 0


def describe_file(path: Path) -> str:
    """A checkpoint's (or engine file's) spec summary and model card, as text."""
    from engines.modelcard import card_from_metadata, format_card

    if path.suffix.lower() in (".onnx", ".plan", ".engine"):
        from engines.backends.sidecar import read_sidecar

        meta = read_sidecar(path)
        ckmeta = meta.get("checkpoint_metadata") or {}
        head = [f"engine: {path}", f"  backend {meta['backend']}, precision {meta['precision']}, "
                f"window {meta['window']}, block {meta['block_size']}, "
                f"built from {meta.get('checkpoint') or meta.get('random_init')}"]
        spec = meta.get("spec") or {}
        return "\n".join(head + _spec_lines(spec) + [format_card(card_from_metadata(ckmeta))])
    from engines.checkpoint import read_checkpoint

    payload = read_checkpoint(path, mmap=True)
    meta = payload.get("metadata") or {}
    n = sum(int(t.numel()) for t in payload["state_dict"].values())
    lines = [f"checkpoint: {path}", f"  parameters and buffers: {n:,}"]
    lines += _spec_lines(payload["spec"])
    if meta.get("source"):
        lines.append(f"  converted from: {meta['source']} (sha256 {meta.get('source_sha256')})")
    return "\n".join(lines + [format_card(card_from_metadata(meta))])


def _spec_lines(spec: dict[str, Any]) -> list[str]:
    if not spec:
        return []
    bb = spec.get("backbone")
    bname = bb if isinstance(bb, str) else (bb or {}).get("name", "inline")
    out = [f"spec: {spec.get('name') or '(unnamed)'}: {spec.get('family')}, backbone {bname}"
           f"{' (' + str(spec['pretrained']) + ')' if spec.get('pretrained') else ''}, "
           f"window {spec.get('window')}, block {spec.get('block_size')}"]
    if spec.get("family") == "clip_ebc":
        out.append(f"  bins {spec.get('bins')}, anchors {spec.get('anchors')} "
                   f"(data set {spec.get('dataset')}), VPT {spec.get('num_vpt')}")
    else:
        out.append(f"  prompt {spec.get('text_prompt')!r}, density scale "
                   f"{spec.get('density_scale')}, resize height {spec.get('resize_height')}")
    return out


def describe_entry(reg: Any, name: str) -> str:
    """A registry entry: source, layout, conversion arguments, licence, cache state, card."""
    from engines.modelcard import card_of, format_card
    from engines.models.hub import HashBook, converted_path, entry_card, status
    from engines.paths import models_dir

    e = reg.get(name)
    recorded = HashBook(models_dir() / "hashes.json").get(e.file_name)
    sha = e.source.sha256 or (f"{recorded['sha256']} (recorded {recorded['recorded']})"
                              if recorded else "not known yet (recorded on the first download)")
    lines = [f"{name}: {e.title}", f"  family: {e.family}"
             + (f" -- {e.status}" if e.status else ""),
             f"  status: {status(e)} ({converted_path(e)})",
             f"  source: {', '.join(e.source.urls) or 'no URL on record'}",
             f"  page: {e.source.page}", f"  file: {e.file_name}, sha256 {sha}",
             f"  layout: archive {e.layout.archive}"
             + (f", member {' | '.join(e.layout.member)}" if e.layout.member else "")
             + f", format {e.layout.format}",
             "  convert: " + ", ".join(f"{k}={v}" for k, v in e.convert.items()),
             f"  licence: {e.licence}", f"  attribution: {e.attribution}"]
    lines += [f"  verified {k}: {v}" for k, v in e.verified.items()]
    lines += [f"  note: {n}" for n in e.notes]
    path = converted_path(e)
    card = card_of(path) if path.is_file() and path.suffix == ".pt" and e.family != "open_clip" \
        else (None if e.status else entry_card(e, e.source.urls[0] if e.source.urls else ""))
    return "\n".join(lines + [format_card(card) if card else "card: (none for this entry)"])


# -- pull / convert / card -------------------------------------------------------------------------


def _pull(args: argparse.Namespace) -> int:
    from engines.models.hub import Registry, TextProgress, pull

    quiet = bool(args.quiet)
    path = pull(args.name, registry=Registry.load(args.registry), local_file=args.file,
                force=args.force,
                progress_for=None if quiet else (lambda label: TextProgress(label)))
    print(path)
    return 0


def convert_spec(args: argparse.Namespace) -> Any:
    """The spec ``models convert`` uses: ``--spec``, ``--entry`` or the flags; an EBC conversion
    without a data set is refused (its anchors cannot be read from the file)."""
    from engines.models.official import official_count_spec, official_ebc_spec
    from engines.models.spec import ModelSpec

    if args.spec:
        return ModelSpec.from_dict(json.loads(Path(args.spec).read_text()))
    if args.entry:
        return _entry_spec(args)
    if args.kind == "ebc":
        if not args.dataset:
            raise ValueError("the anchors of a CLIP-EBC file depend on the data set it was "
                             "trained on, which the file does not record: give --dataset "
                             "(sha, shb, nwpu, qnrf, jhu), or --entry NAME / --spec FILE")
        return official_ebc_spec(args.backbone or "ViT-B-16", args.dataset, args.truncation,
                                 args.window, args.num_vpt, args.prompt_type)
    return official_count_spec(args.pretrained, text_prompt=args.text_prompt,
                               backbone=args.backbone or "ViT-B-16")


def _entry_spec(args: argparse.Namespace) -> Any:
    from engines.models.hub import CountArgs, PretrainedRef, Registry, entry_spec, resolve

    reg = Registry.load(args.registry)
    entry = reg.get(args.entry)
    family = {"ebc": "clip_ebc", "count": "clip_count"}[args.kind]
    if entry.family != family:
        raise ValueError(f"--entry {args.entry} is a {entry.family} entry, not {family}")
    pretrained = None
    if isinstance(entry.args, CountArgs):
        ref = entry.args.pretrained
        pretrained = str(resolve(ref.model, registry=reg)) if isinstance(ref, PretrainedRef) \
            else ref
    return entry_spec(entry, pretrained)


def _convert(args: argparse.Namespace) -> int:
    from engines.checkpoint import file_hash, save_checkpoint
    from engines.modelcard import ModelCard
    from engines.models.official import load_official_count, load_official_ebc

    spec = convert_spec(args)
    if args.kind == "ebc":
        model = load_official_ebc(args.src, spec)
    else:
        model = load_official_count(args.src, spec)
    src = Path(args.src)
    card = ModelCard(name=model.spec.name or Path(args.dst).stem,
                     summary=f"converted from {src.name}", command=_convert_command(args),
                     source=src.name,
                     licence="as the original release's (not recorded by this conversion)")
    if args.entry:
        from engines.models.hub import Registry, entry_card

        card = entry_card(Registry.load(args.registry).get(args.entry), src.name)
        card = card.replace(command=_convert_command(args))
    save_checkpoint(args.dst, model, {"source": src.name, "source_sha256": file_hash(src)},
                    card=card)
    print(f"wrote {args.dst} ({model.spec.name})")
    return 0


def _convert_command(args: argparse.Namespace) -> str:
    import shlex

    parts = ["crowdstream", "models", "convert", args.kind, args.src, args.dst]
    for flag in ("entry", "backbone", "dataset", "window", "num_vpt", "spec"):
        value = getattr(args, flag)
        if value is not None:
            parts += [f"--{flag.replace('_', '-')}", str(value)]
    return shlex.join(parts)


def _write_card(args: argparse.Namespace) -> int:
    import yaml

    from engines.checkpoint import read_metadata, rewrite_metadata
    from engines.modelcard import ModelCard, format_card

    try:
        data = yaml.safe_load(Path(args.card_file).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"{args.card_file}: cannot read the card ({e})") from None
    card = ModelCard.from_dict(data)
    meta = read_metadata(args.checkpoint)
    meta["card"] = card.to_dict()
    digest = rewrite_metadata(args.checkpoint, meta, out=args.out)
    print(format_card(card))
    print(f"wrote the card into {args.out or args.checkpoint}; weights sha256 {digest} (unchanged)")
    return 0
