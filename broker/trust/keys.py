"""Camera keys on disk, in ZeroMQ's own certificate format (``zmq.auth``), and the
``broker keys`` command that manages them.

A keys folder holds the broker's key pair and one key pair per camera::

    DIR/broker.key            the broker's public key: give it to every worker
    DIR/broker.key_secret     the broker's secret key: never leaves the broker (0600)
    DIR/cameras/ID.key        camera ID's public key: the broker accepts ID's frames,
                              hellos and replies only from the holder of its secret
    DIR/cameras/ID.key_secret camera ID's secret key: copy it to that camera's worker
                              host, then it may be deleted here (0600)

Folders are 0700 and secret files 0600, written whole and then renamed into place, so
no other user ever sees a secret, even half-written. The broker reads only the public
``.key`` files of ``cameras/`` (`read_camera_keys`): removing one cuts that camera off.
"""

from __future__ import annotations

import argparse
import os
import shlex
import stat
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth

from broker.protocol.wire import CAMERA_ID

BROKER = "broker"
CAMERAS = "cameras"
PUBLIC, SECRET = ".key", ".key_secret"


class KeyFileError(OSError):
    """A key file or folder that cannot be used; the message names the path."""


@dataclass(frozen=True, slots=True)
class CameraKey:
    camera: str
    public: str  # Z85 text, 40 characters
    path: Path  # the public key file


def broker_public(folder: Path) -> Path:
    return folder / (BROKER + PUBLIC)


def broker_secret(folder: Path) -> Path:
    return folder / (BROKER + SECRET)


def camera_public(folder: Path, camera: str) -> Path:
    return folder / CAMERAS / (camera + PUBLIC)


def camera_secret(folder: Path, camera: str) -> Path:
    return folder / CAMERAS / (camera + SECRET)


def private_folder(path: Path) -> Path:
    """``path`` as a folder only its owner can open (created or narrowed to 0700)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def write_pair(folder: Path, name: str) -> tuple[Path, Path]:
    """A new key pair ``folder/name.key`` (0644) and ``.key_secret`` (0600); refuses to
    overwrite either. Written in a private temporary folder and renamed into place."""
    public, secret = folder / (name + PUBLIC), folder / (name + SECRET)
    for path in (public, secret):
        if path.exists():
            raise KeyFileError(f"{path}: exists already (remove it first to replace the key)")
    staging = Path(tempfile.mkdtemp(prefix=".new-", dir=folder))  # 0700
    try:
        made_public, made_secret = zmq.auth.create_certificates(staging, name)
        os.chmod(made_secret, 0o600)
        os.chmod(made_public, 0o644)
        os.replace(made_secret, secret)
        os.replace(made_public, public)
    finally:
        for leftover in staging.iterdir():
            leftover.unlink()
        staging.rmdir()
    return public, secret


def load_public(path: Path) -> str:
    """The Z85 public key of a ``.key`` or ``.key_secret`` file."""
    try:
        public, _ = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"{path}: cannot read a ZeroMQ certificate: {exc}") from exc
    if public is None or len(public) != 40:
        raise KeyFileError(f"{path}: holds no CURVE public key")
    return public.decode("ascii")


def load_secret(path: Path) -> tuple[bytes, bytes]:
    """(public, secret) Z85 keys of a ``.key_secret`` file; refuses a secret that other
    users could read."""
    try:
        mode = path.stat().st_mode
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"{path}: cannot read a ZeroMQ secret key: {exc}") from exc
    if secret is None or len(secret) != 40 or public is None:
        raise KeyFileError(f"{path}: holds no CURVE secret key (is it the .key_secret file?)")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            f"{path}: other users may read this secret key (mode {stat.S_IMODE(mode):o}); "
            f"chmod 600 it"
        )
    return public, secret


def read_camera_keys(folder: Path) -> list[CameraKey]:
    """Every camera's public key in ``folder/cameras``; a file whose name is not a camera
    id, or that holds no key, is skipped."""
    found = []
    try:
        names = sorted(p for p in (folder / CAMERAS).iterdir() if p.name.endswith(PUBLIC))
    except FileNotFoundError:
        return []
    for path in names:
        camera = path.name[: -len(PUBLIC)]
        if not CAMERA_ID.fullmatch(camera):
            continue
        try:
            found.append(CameraKey(camera, load_public(path), path))
        except KeyFileError:
            continue
    return found


def signature(folder: Path) -> tuple[tuple[str, int, int], ...]:
    """What changes when a camera key is added, replaced or removed: each public key
    file's name, mtime (ns) and size. Cheap enough to poll every second."""
    try:
        entries = list(os.scandir(folder / CAMERAS))
    except FileNotFoundError:
        return ()
    marks = []
    for entry in entries:
        if not entry.name.endswith(PUBLIC):
            continue
        try:
            info = entry.stat()
        except FileNotFoundError:
            continue
        marks.append((entry.name, info.st_mtime_ns, info.st_size))
    return tuple(sorted(marks))


def worker_command(folder: Path, camera: str, broker_host: str = "BROKER-HOST") -> str:
    """The ``camera-worker`` command line for a remote worker with ``camera``'s key."""
    return shlex.join(
        [
            "camera-worker",
            "--broker",
            f"tcp://{broker_host}:5555",
            "--control",
            f"tcp://{broker_host}:5556",
            "--broker-key",
            str(broker_public(folder)),
            "--key",
            str(camera_secret(folder, camera)),
            "--camera-id",
            camera,
            "--source",
            "test-pattern",
        ]
    )


# --- ``broker keys`` -------------------------------------------------------------------


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = commands.add_parser("keys", help="manage camera keys (ZeroMQ CURVE)")
    actions = keys.add_subparsers(dest="action", required=True)
    init = actions.add_parser("init", help="write the broker's key pair into DIR")
    add = actions.add_parser("add", help="write a key pair for CAMERA_ID into DIR/cameras")
    add.add_argument("camera", metavar="CAMERA_ID")
    listing = actions.add_parser("list", help="list the cameras that have a key")
    remove = actions.add_parser("remove", help="remove CAMERA_ID's key: cut it off")
    remove.add_argument("camera", metavar="CAMERA_ID")
    for action in (init, add, listing, remove):
        action.add_argument("--dir", required=True, help="the keys folder (security.keys_dir)")


def run(args: argparse.Namespace) -> int:
    folder = Path(args.dir)
    try:
        return ACTIONS[args.action](folder, args)
    except KeyFileError as exc:
        print(f"broker keys {args.action}: {exc}", file=sys.stderr)
        return 1


def _init(folder: Path, args: argparse.Namespace) -> int:
    private_folder(folder)
    private_folder(folder / CAMERAS)
    if broker_secret(folder).exists():
        raise KeyFileError(f"{broker_secret(folder)}: exists already; the broker has its key")
    public, secret = write_pair(folder, BROKER)
    print(f"wrote {public} (give it to every worker) and {secret} (keep it on the broker)")
    print(f'set in the config: [security] keys_dir = "{folder}"')
    return 0


def _add(folder: Path, args: argparse.Namespace) -> int:
    camera = args.camera
    if not CAMERA_ID.fullmatch(camera):
        raise KeyFileError(f"camera id must match {CAMERA_ID.pattern}, got {camera!r}")
    if not broker_public(folder).exists():
        raise KeyFileError(f"{broker_public(folder)}: missing; run `broker keys init` first")
    public, secret = write_pair(private_folder(folder / CAMERAS), camera)
    print(f"wrote {public} (the broker accepts {camera} with it) and {secret}")
    print(f"copy {secret} and {broker_public(folder)} to the worker's host, then run:")
    print(f"  {worker_command(folder, camera)}")
    return 0


def _list(folder: Path, args: argparse.Namespace) -> int:
    for key in read_camera_keys(folder):
        print(f"{key.camera}\t{key.public}")
    return 0


def _remove(folder: Path, args: argparse.Namespace) -> int:
    public = camera_public(folder, args.camera)
    if not CAMERA_ID.fullmatch(args.camera) or not public.exists():
        raise KeyFileError(f"no key for camera {args.camera!r} in {folder / CAMERAS}")
    public.unlink()
    camera_secret(folder, args.camera).unlink(missing_ok=True)
    print(f"removed {args.camera}'s key: a running broker refuses it within seconds")
    return 0


ACTIONS = {"init": _init, "add": _add, "list": _list, "remove": _remove}
