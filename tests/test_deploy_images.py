"""The container images and the compose stack, linted offline (hadolint is not available here, and
no container engine can pull a base image): the Dockerfiles are parsed and held to the rules the
Deploy section promises -- multi-stage, pinned bases, a non-root user, a health check on the
metrics port, the demo as the default command, the CPU build of torch in the CPU image -- and the
compose file, Prometheus and Grafana provisioning agree with each other and with the configs."""

from __future__ import annotations

import json
import os
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.specifiers import SpecifierSet

from pipeline.config import MetricsConfig, config_from_dict, load_config

REPO = Path(__file__).resolve().parent.parent
DOCKER = REPO / "deploy" / "docker"
IMAGES = {"cpu": DOCKER / "Dockerfile.cpu", "gpu": DOCKER / "Dockerfile.gpu"}


@dataclass
class Stage:
    base: str
    name: str | None
    lines: list[tuple[str, str]] = field(default_factory=list)  # (INSTRUCTION, arguments)

    def all(self, instr: str) -> list[str]:
        return [args for i, args in self.lines if i == instr]


@dataclass
class Dockerfile:
    args: dict[str, str]  # ARGs before the first FROM, with their defaults
    stages: list[Stage]

    def resolve(self, text: str, extra: dict[str, str] | None = None) -> str:
        values = {**self.args, **(extra or {})}
        return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: values.get(m[1] or m[2], m[0]), text)

    def stage_args(self, stage: Stage) -> dict[str, str]:
        out = {}
        for a in stage.all("ARG"):
            k, _, v = a.partition("=")
            out[k] = v
        return out


def parse(path: Path) -> Dockerfile:
    """Instructions with their continuation lines joined and comments dropped."""
    logical, buf = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        logical.append(buf + line)
        buf = ""
    assert not buf, f"{path}: a continuation runs off the end"
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for text in logical:
        instr, _, rest = text.partition(" ")
        instr, rest = instr.upper(), rest.strip()
        if instr == "FROM":
            parts = rest.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(parts[0], name))
        elif not stages:
            assert instr == "ARG", f"{path}: {instr} before the first FROM"
            k, _, v = rest.partition("=")
            args[k] = v
        else:
            stages[-1].lines.append((instr, rest))
    return Dockerfile(args, stages)


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


@pytest.fixture(params=sorted(IMAGES))
def image(request: pytest.FixtureRequest) -> tuple[str, Dockerfile]:
    return request.param, parse(IMAGES[request.param])


def test_multi_stage_with_pinned_bases(image: tuple[str, Dockerfile]) -> None:
    kind, df = image
    assert len(df.stages) >= 2 and [s.name for s in df.stages] == ["build", "runtime"]
    for stage in df.stages:
        base = df.resolve(stage.base)
        repo, _, tag = base.rpartition(":")
        assert repo and tag and tag != "latest" and re.search(r"\d+\.\d+", tag), \
            f"{kind}: base {base!r} is not pinned to a version"
    bases = {df.resolve(s.base) for s in df.stages}
    assert len(bases) == 1, "build and runtime stages must share the base (same Python, libc)"
    if kind == "gpu":
        assert next(iter(bases)).startswith("nvidia/cuda:") and "-runtime-" in next(iter(bases))
    # the runtime stage takes only the built environment from the build stage
    runtime = df.stages[-1]
    froms = [re.search(r"--from=(\S+)", c)[1] for c in runtime.all("COPY") if "--from=" in c]
    assert froms == ["build"]


def test_runtime_stage_runs_as_non_root_with_a_health_check_and_the_demo(
        image: tuple[str, Dockerfile], tmp_path: Path) -> None:
    kind, df = image
    runtime = df.stages[-1]
    users = runtime.all("USER")
    assert users, f"{kind}: no USER in the final stage: the image would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    assert re.search(rf"useradd .*--uid (\d+) .*\b{user}\b", " ".join(runtime.all("RUN")))
    (health,) = runtime.all("HEALTHCHECK")
    assert re.search(r"--start-period=\d+s", health) and "CMD" in health
    probe = exec_form(health.split("CMD", 1)[1].strip())
    assert probe[0] == "python" and "CROWDSTREAM_HEALTH_URL" in probe[-1]
    env = " ".join(runtime.all("ENV"))
    port = MetricsConfig().port
    assert f"CROWDSTREAM_HEALTH_URL=http://127.0.0.1:{port}/healthz" in env
    # every cache in the writable volume: the root filesystem may be read-only (Kubernetes)
    assert "CROWDSTREAM_HOME=/var/lib/crowdstream" in env
    assert "XDG_CACHE_HOME=/var/lib/crowdstream/" in env
    assert 'VOLUME ["/var/lib/crowdstream"]' in [f"VOLUME {v}" for v in runtime.all("VOLUME")]
    assert runtime.all("EXPOSE") == [str(port)]
    assert exec_form(runtime.all("ENTRYPOINT")[-1]) == ["tini", "--", "crowdstream"]
    cmd = exec_form(runtime.all("CMD")[-1])
    assert cmd[0] == "run"
    # the default command's config is the shipped demo (GPU: the same demo on CUDA), and loads
    if kind == "cpu":
        cfg = load_config(REPO / cmd[1])
    else:  # demo-gpu.yaml is copied beside demo.yaml in the image: its paths are the demo's
        assert "COPY --chown=root:root deploy/docker/demo-gpu.yaml /app/configs/demo-gpu.yaml" \
            in [f"COPY {c}" for c in runtime.all("COPY")] and cmd[1] == "configs/demo-gpu.yaml"
        (tmp_path / "demo-gpu.yaml").write_text((DOCKER / "demo-gpu.yaml").read_text())
        cfg = load_config(tmp_path / "demo-gpu.yaml")
        for used in (cfg.cameras["mall"].url, cfg.model.checkpoint):
            assert (REPO / "configs" / Path(used).relative_to(tmp_path)).is_file(), used
    assert list(cfg.cameras) == ["mall"]
    assert cfg.model.device == ("cpu" if kind == "cpu" else "cuda")
    for instr in ("ENV", "ARG"):
        for line in runtime.all(instr) + df.stages[0].all(instr):
            assert not re.search(r"(PASSWORD|SECRET|TOKEN)\w*=\S", line), line


def test_builds_install_torch_from_the_right_index_and_the_pinned_torchvision(
        image: tuple[str, Dockerfile]) -> None:
    kind, df = image
    build = df.stages[0]
    args = df.stage_args(build)
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pin = next(d for d in deps if d.startswith("torchvision=="))
    assert f"torchvision=={args['TORCHVISION_VERSION']}" == pin, "Dockerfile and pyproject differ"
    # torch is pinned beside it (torchvision 0.29.1 also admits a newer torch it was not built
    # for), within the project's own range
    torch_spec = next(d for d in deps if re.match(r"torch\b[^v]", d))[len("torch"):]
    assert re.fullmatch(r"\d+\.\d+\.\d+", args["TORCH_VERSION"])
    assert SpecifierSet(torch_spec).contains(args["TORCH_VERSION"])
    runs = build.all("RUN")
    torch_step = next(i for i, r in enumerate(runs) if "TORCH_INDEX_URL" in r)
    project_step = next(i for i, r in enumerate(runs) if re.search(r"pip install \.(\s|$)", r))
    assert torch_step < project_step, "torch must be in before the project asks PyPI for it"
    index = args["TORCH_INDEX_URL"]
    assert index.endswith("/whl/cpu" if kind == "cpu" else "/whl/cu130")
    guard = runs[project_step]
    assert ("assert not torch.version.cuda" if kind == "cpu" else "assert torch.version.cuda") \
        in guard
    if kind == "gpu":
        assert re.match(r"tensorrt-cu13==\d+\.\d+", args["TENSORRT_PACKAGE"])
    for run in runs + df.stages[-1].all("RUN"):
        if "apt-get install" in run:
            assert "--no-install-recommends" in run and "rm -rf /var/lib/apt/lists/*" in run
    env = " ".join(build.all("ENV"))
    assert "PIP_NO_CACHE_DIR=1" in env


def test_copied_sources_exist_and_the_build_context_keeps_them(
        image: tuple[str, Dockerfile]) -> None:
    _, df = image
    ignored = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    for stage in df.stages:
        for copy in stage.all("COPY"):
            if "--from=" in copy:
                continue
            *sources, _ = [p for p in shlex.split(copy) if not p.startswith("--")]
            for src in sources:
                assert (REPO / src).exists(), f"COPY {src}: not in the repository"
                assert src.split("/")[0] not in ignored, f"COPY {src}: excluded by .dockerignore"


# ---------------------------------------------------------------------------- compose

@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((REPO / "deploy" / "compose.yaml").read_text())


def test_compose_stack(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"valkey", "pipeline", "console", "prometheus", "grafana"}
    for name, svc in services.items():
        image = svc["image"]
        if image.startswith("${CROWDSTREAM_IMAGE"):
            assert svc["build"]["dockerfile"] == "deploy/docker/Dockerfile.cpu"
            continue
        repo, _, tag = image.rpartition(":")
        assert tag and tag != "latest" and re.search(r"\d+\.\d+", tag), f"{name}: {image}"
    pipe = services["pipeline"]
    assert pipe["command"][:2] == ["run", "/etc/crowdstream/site.yaml"]
    assert re.fullmatch(r"\d+(mb|gb)", pipe["shm_size"])
    assert services["console"]["command"][0] == "serve"
    assert "127.0.0.1:8765:8765" in services["console"]["ports"]
    for svc in services.values():  # published ports stay on the host's loopback
        assert all(str(p).startswith("127.0.0.1:") for p in svc.get("ports", []))
    # every secret comes from the environment (.env), required, never written here
    text = (REPO / "deploy" / "compose.yaml").read_text()
    for var in ("REDIS_PASSWORD", "CROWDSTREAM_API_TOKEN", "GRAFANA_ADMIN_PASSWORD"):
        assert re.search(rf"\${{{var}:\?", text), var
    example = (REPO / "deploy" / "compose.env.example").read_text()
    assert all(v in example for v in ("REDIS_PASSWORD", "CROWDSTREAM_API_TOKEN"))


def test_compose_site_config_prometheus_and_grafana_agree(compose: dict[str, Any]) -> None:
    services = compose["services"]
    raw = yaml.safe_load((REPO / "deploy" / "compose" / "site.yaml").read_text())
    env = {k: v for k, v in services["pipeline"]["environment"].items()}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update({k: str(v) for k, v in env.items()})
    try:
        cfg = config_from_dict(raw, file="deploy/compose/site.yaml")
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    assert cfg.redis.url == "redis://valkey:6379/0" and cfg.redis.password_env == "REDIS_PASSWORD"
    assert cfg.metrics.host == "0.0.0.0"
    prom = yaml.safe_load((REPO / "deploy" / "prometheus.yml").read_text())
    (job,) = prom["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == [f"pipeline:{cfg.metrics.port}"]
    mounts = services["grafana"]["volumes"]
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in mounts
    dash_mount = next(m for m in mounts if m.startswith("../configs/grafana:"))
    target = dash_mount.split(":")[1]
    prov = yaml.safe_load((REPO / "deploy/grafana/provisioning/dashboards/crowdstream.yaml")
                          .read_text())
    assert prov["providers"][0]["options"]["path"] == target
    ds = yaml.safe_load((REPO / "deploy/grafana/provisioning/datasources/prometheus.yaml")
                        .read_text())
    assert ds["datasources"][0]["url"] == "http://prometheus:9090"
    dashboard = REPO / "configs" / "grafana" / "crowdstream.json"
    if dashboard.exists():  # the dashboard of the metrics work (issue 14)
        assert json.loads(dashboard.read_text())["uid"]
