"""buildah for the image tests: build deploy/Containerfile offline and start what it built.

Every call uses the vfs storage driver and, for ``run``, chroot isolation with the host
network: the only way containers start in this sandbox (``podman run`` is refused). The
storage lives where ``root`` says (``make image-test`` keeps it under ~/.cache), so the test
never touches a system-wide image store.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any


def missing() -> str | None:
    """Why the image test cannot run here (None: it can)."""
    if shutil.which("buildah") is None:
        return "buildah is not installed (`make image-test` installs it)"
    if os.geteuid() != 0:
        return "building with buildah's vfs driver and chroot isolation needs root"
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is missing: the build runs without a network through it"
    return None


class Buildah:
    def __init__(self, root: Path) -> None:
        self.prefix = [
            "buildah", "--storage-driver", "vfs",
            "--root", str(root / "storage"), "--runroot", str(root / "run"),
        ]  # fmt: skip

    def __call__(self, *args: str, timeout: float = 120) -> str:
        done = subprocess.run(
            [*self.prefix, *args], capture_output=True, text=True, timeout=timeout, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"buildah {' '.join(args)}: {done.returncode}\n{done.stderr}")
        return done.stdout

    def build_offline(self, context: Path, log: Path, *args: str, timeout: float = 480) -> None:
        """``buildah bud`` in a new network namespace (loopback only, down): nothing can be
        downloaded, so everything the build installs must come from the mounted wheels."""
        cmd = ["unshare", "--net", *self.prefix, "bud", "--isolation", "chroot", *args]
        with log.open("wb") as out:
            done = subprocess.run(
                [*cmd, str(context)], stdout=out, stderr=subprocess.STDOUT, timeout=timeout,
                check=False,
            )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"the image build failed ({done.returncode}):\n{log.read_text()}")

    def inspect(self, image: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self("inspect", "--type", "image", image))
        return data

    def run_command(
        self, container: str, command: list[str], options: tuple[str, ...] = ()
    ) -> list[str]:
        """The argv that runs ``command`` in ``container`` (chroot isolation, host network)."""
        return [*self.prefix, "run", "--isolation", "chroot", *options, container, "--", *command]


def contained_processes(parent: int) -> list[tuple[int, list[str]]]:
    """(pid, argv) of the processes below ``parent`` that run inside a container: their root
    directory is not the host's (chroot isolation)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    todo, found = list(children.get(parent, [])), []
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
            root = os.readlink(f"/proc/{pid}/root")
        except OSError:
            continue
        if root != "/":
            found.append((pid, [a for a in argv if a]))
    return found


def contained_process(parent: int, name: str) -> int:
    """The process below ``parent`` running the program ``name`` inside a container (not
    buildah's own ``buildah-chroot-exec`` that waits for it). buildah run does not forward
    SIGTERM (it kills its command), so a test signals this process, as a container runtime
    signals a container's PID 1."""
    found = [
        pid
        for pid, argv in contained_processes(parent)
        if argv and not argv[0].startswith("buildah") and any(Path(a).name == name for a in argv)
    ]
    if len(found) != 1:
        raise RuntimeError(f"expected one contained {name!r} below {parent}, found {found}")
    return found[0]
