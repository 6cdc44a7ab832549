"""Containers for real: the images built from docker/ and run as the manifests run them.

A container engine is Docker where its daemon answers, else Debian's podman run as this machine
allows it (`runc`, not Debian's default `crun`, which fails on a hybrid cgroup hierarchy; and a
`containers.conf` with `default_ulimits = []`, kept outside the repository, because setting
RLIMIT_NPROC is not permitted here). Public registries may be out of reach, so the base image
can be made from Debian's packages: `debootstrap --variant=minbase` with Python 3.11 and its
venv module, from the mirror apt already uses, imported as `BASE_IMAGE`.

`run` starts a container the way a pod runs it: read-only root filesystem with /tmp a tmpfs
(the pod's emptyDir), the manifests' user id, every capability dropped, no new privileges,
the model repository mounted read-only at /mnt/models, and the host's network (loopback is
the only network the tests use: each server gets its own ports, as each pod has its own).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASE_IMAGE = "localhost/image-classifier-base:bookworm"
DEBIAN_SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# name -> Dockerfile; `make image-test` builds these on BASE_IMAGE.
IMAGES = {
    "transformer": "docker/transformer.Dockerfile",
    "predictor-cpu": "docker/predictor-cpu.Dockerfile",
    "batch": "docker/batch.Dockerfile",
}
# Every image; `make images` builds them all on their own default bases.
ALL_IMAGES = {**IMAGES, "predictor": "docker/predictor.Dockerfile"}
TAG = "localhost/image-classifier-{name}:test"
CONTAINERS_CONF = (
    "[containers]\n# setrlimit(RLIMIT_NPROC) is not permitted on these machines.\n"
    "default_ulimits = []\n"
)
# What a pod's emptyDir at /tmp gives the servers here (caches, the decode pool's files).
TMPFS = "/tmp:rw,size=512m,mode=1777"


class ContainerError(RuntimeError):
    """A container engine command failed; says which and what it wrote."""


@dataclass(frozen=True)
class Engine:
    """A container engine command line: docker, or podman with the settings this machine
    needs."""

    command: str
    global_args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return Path(self.command).name

    def argv(self, *args: str) -> list[str]:
        return [self.command, *self.global_args, *args]

    def run(
        self, *args: str, input: bytes | None = None, timeout: float = 1800, check: bool = True
    ) -> subprocess.CompletedProcess[bytes]:
        """Run one engine command; raises ContainerError (with its output) when it fails."""
        done = subprocess.run(
            self.argv(*args),
            input=input,
            capture_output=True,
            timeout=timeout,
            env={**os.environ, **self.env},
        )
        if check and done.returncode != 0:
            output = (done.stderr or done.stdout).decode(errors="replace")[-4000:]
            raise ContainerError(f"{' '.join(self.argv(*args[:3]))} ... failed:\n{output}")
        return done

    def image_exists(self, image: str) -> bool:
        return self.run("image", "inspect", image, check=False).returncode == 0


def find_engine(work_dir: Path) -> Engine | None:
    """Docker if its daemon answers, else podman configured for this machine (its
    containers.conf written under `work_dir`), else None."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "info"], capture_output=True).returncode == 0:
        return Engine(docker)
    podman = shutil.which("podman")
    if podman is None:
        return None
    work_dir.mkdir(parents=True, exist_ok=True)
    conf = work_dir / "containers.conf"
    conf.write_text(CONTAINERS_CONF)
    runtime = ("--runtime", "runc") if shutil.which("runc") else ()
    return Engine(podman, runtime, {"CONTAINERS_CONF": str(conf)})


def apt_mirror(sources: Path = Path("/etc/apt/sources.list.d/debian.sources")) -> str:
    """The Debian mirror apt uses here (the first URIs of its deb822 sources), else
    deb.debian.org."""
    try:
        text = sources.read_text()
    except OSError:
        return DEFAULT_MIRROR
    match = re.search(r"^URIs:\s*(\S+)", text, re.MULTILINE)
    return match.group(1) if match else DEFAULT_MIRROR


def ensure_base(engine: Engine, image: str = BASE_IMAGE) -> str:
    """The Debian base image, made with debootstrap unless the engine has it; returns its
    name. Raises ContainerError when debootstrap is missing or fails."""
    if engine.image_exists(image):
        return image
    debootstrap = shutil.which("debootstrap") or (
        "/usr/sbin/debootstrap" if Path("/usr/sbin/debootstrap").exists() else None
    )
    if debootstrap is None:
        raise ContainerError("debootstrap is not installed (apt-get install debootstrap)")
    with tempfile.TemporaryDirectory(prefix="debian-base-") as root:
        started = time.monotonic()
        done = subprocess.run(
            [
                debootstrap,
                "--variant=minbase",
                f"--include={','.join(BASE_PACKAGES)}",
                DEBIAN_SUITE,
                root,
                apt_mirror(),
            ],
            capture_output=True,
            timeout=900,
        )
        if done.returncode != 0:
            raise ContainerError(f"debootstrap failed:\n{done.stdout.decode()[-3000:]}")
        # No apt lists or caches in the image.
        for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
            shutil.rmtree(Path(root) / leftover, ignore_errors=True)
        tar = subprocess.run(["tar", "-C", root, "-c", "."], capture_output=True, check=True)
        engine.run("import", "-", image, input=tar.stdout)
        print(f"[images] base {image} from debootstrap in {time.monotonic() - started:.0f} s")
    return image


def build(engine: Engine, name: str, base: str | None) -> str:
    """Build docker/<name>'s image on `base` (None: its Dockerfile's default); returns its tag.
    Raises ContainerError."""
    tag = TAG.format(name=name)
    args = ["build", "-f", str(ROOT / ALL_IMAGES[name]), "-t", tag]
    if base is not None:
        args += ["--build-arg", f"BASE_IMAGE={base}"]
    if engine.name == "podman":
        # pip inside the build reaches the package index through the host's network, trusting
        # what the host trusts.
        args += ["--network=host", "-v", "/etc/ssl/certs:/etc/ssl/certs:ro"]
        cert = os.environ.get("PIP_CERT") or os.environ.get("SSL_CERT_FILE")
        if cert:
            args += ["--build-arg", f"PIP_CERT={cert}"]
    started = time.monotonic()
    engine.run(*args, str(ROOT))
    print(f"[images] {tag} built in {time.monotonic() - started:.0f} s, {size_mb(engine, tag)} MB")
    return tag


def size_mb(engine: Engine, image: str) -> int:
    """The image's size in MB (10^6 bytes), as the engine reports it."""
    done = engine.run("image", "inspect", "--format", "{{.Size}}", image)
    return round(int(done.stdout.decode().split()[0]) / 1e6)


@dataclass
class Container:
    """One running container: its engine and name."""

    engine: Engine
    name: str

    def logs(self) -> str:
        done = self.engine.run("logs", self.name, check=False)
        return (done.stdout + done.stderr).decode(errors="replace")

    def signal(self, signal: str) -> None:
        self.engine.run("kill", "--signal", signal, self.name)

    def wait(self, timeout_s: float) -> int:
        """The container's exit code once it exits; raises TimeoutError after `timeout_s`."""
        try:
            done = self.engine.run("wait", self.name, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"{self.name} still running after {timeout_s:.0f} s") from None
        return int(done.stdout.decode().strip().splitlines()[-1])

    def remove(self) -> None:
        self.engine.run("rm", "--force", "--time", "0", self.name, check=False)


def run(
    engine: Engine,
    name: str,
    image: str,
    args: Sequence[str],
    env: Mapping[str, str],
    user: int,
    model_repository: Path | None,
    volumes: Mapping[str, str] | None = None,
) -> Container:
    """Start `image` detached as a pod would run it (see the module docstring) with `args`,
    `env` and `volumes` besides the repository (host path -> "container path[:ro]"); returns
    the container."""
    options = [
        "run", "--detach", "--name", name,
        "--network", "host",
        "--read-only", "--tmpfs", TMPFS,
        "--user", f"{user}:{user}",
        "--cap-drop", "ALL",
        "--security-opt", "no-new-privileges",
    ]  # fmt: skip
    if model_repository is not None:
        options += ["-v", f"{model_repository}:/mnt/models:ro"]
    for host, inside in (volumes or {}).items():
        options += ["-v", f"{host}:{inside}"]
    for key, value in env.items():
        options += ["-e", f"{key}={value}"]
    engine.run("rm", "--force", name, check=False)
    engine.run(*options, image, *args)
    return Container(engine, name)


def main(argv: list[str] | None = None) -> int:
    """`python -m harness.containers [--debian-base] [NAME ...]`: build images (`make images`)."""
    import argparse

    parser = argparse.ArgumentParser(description="Build the images in docker/.")
    parser.add_argument("names", nargs="*", help=f"of {sorted(ALL_IMAGES)} (default: all)")
    parser.add_argument(
        "--debian-base",
        action="store_true",
        help=f"build on {BASE_IMAGE} (debootstrap) instead of each Dockerfile's default base",
    )
    args = parser.parse_args(argv)
    engine = find_engine(Path(tempfile.gettempdir()) / "image-classifier-containers")
    if engine is None:
        print("make images: no container engine (docker with a daemon, or podman and runc)")
        return 1
    base = ensure_base(engine) if args.debian_base else None
    for name in args.names or sorted(ALL_IMAGES):
        build(engine, name, base)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
