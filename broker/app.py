"""The composition root: builds every component and runs them in one nursery.

Cancelling ``Broker.run`` is the orderly shutdown: the listener stops, every WebSocket
client is told 1001 (going away), workers get SIGTERM then SIGKILL after the grace
period, and the ingest and control sockets are closed. Each step is bounded.

With ``[analytics]`` enabled, every accepted frame is also republished on the frame
feed and a supervised analyzer process reports what it sees (`broker.analytics`).

Supervised workers reach the broker over two private ipc:// endpoints in a private
folder (`broker.support.workdir`): ingest (frames) and control (settings, commands, heartbeats).
At start the broker removes such folders left by brokers of its user that died.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import trio
import zmq

from broker.analytics import Analytics
from broker.config import Config
from broker.control import Control, bridge
from broker.control.supervisor import Supervisor
from broker.core.camera import CameraInfo
from broker.core.hub import Hub
from broker.core.watcher import Watcher
from broker.ingest import offline
from broker.ingest import zeromq as ingest
from broker.serve.metrics import Metrics
from broker.serve.server import Server
from broker.support import introspect, workdir
from broker.support.faults import Faults
from broker.support.zmqtrio import TrioSocket
from broker.trust import curve
from broker.trust import keys as keyfiles

log = logging.getLogger("broker")

# ZeroMQ I/O threads with camera keys: CURVE decryption runs in them, one connection per
# thread; two let two workers' frames be decrypted at once (docs/security.md).
IO_THREADS = 2


class Broker:
    def __init__(self, config: Config, log_level: str = "info", config_file: str = "") -> None:
        self.config = config
        self.log_level = log_level
        self.ingest_stats = ingest.IngestStats()
        self.hub = Hub(
            [CameraInfo(c.id, c.display_name, c.width, c.height, c.format) for c in config.cameras],
            offline_after=config.ingest.offline_after,
            accept_unknown=config.ingest.accept_unknown_cameras,
            retention=config.retention,
            errors=self.ingest_stats.errors,  # stale frames count as ingest errors
            max_cameras=config.ingest.max_cameras,
        )
        self.faults = Faults()  # exceptions contained at a boundary, by where
        self.supervisor: Supervisor | None = None
        self.control = Control(config, self.hub, faults=self.faults)
        self.control.on_settings = bridge.show_names(config, self.hub)  # the name setting
        self.metrics = Metrics(
            self.hub, self.ingest_stats.errors, self.worker_restarts, self.control, self.faults
        )
        self.analytics: Analytics | None = None
        if config.analytics.enabled:
            self.analytics = Analytics(
                config,
                self.control.events,
                self.control.broker_settings,
                lambda: list(self.hub.cameras),
                faults=self.faults,
                log_level=log_level,
            )
            self.control.on_broker_settings = self.analytics.settings_changed
            self.metrics.add_analytics(self.analytics)
        # Offline cameras, expired sessions and retained frames; a forgotten camera's
        # latency series goes with it.
        self.watcher = Watcher(self.hub, config.ingest.session_ttl, self.forget)
        self.server = Server(
            config,
            self.hub,
            self.health,
            self.metrics.exposition,
            control=self.control,
            faults=self.faults,
            config_file=config_file,  # for security.revoked, re-read when it changes
            analytics=self.analytics,
        )
        if self.server.tls is not None:
            self.metrics.add_tls(self.server.tls.stats)
        self.port = 0
        self.ingest_endpoints: list[str] = []
        self.control_endpoints: list[str] = []
        self.started_at = time.monotonic()
        self.keys: curve.CameraKeys | None = None  # with security.keys_dir: CURVE
        self.zap: zmq.Socket[bytes] | None = None  # the ZAP handler's socket, with keys
        # Ingest or control reachable from other hosts without keys (allowed by
        # security.allow_insecure_network): warned at start, shown in /healthz.
        self.insecure_network = bool(config.network_endpoints()) and not config.security.keys_dir

    async def run(self, *, task_status: trio.TaskStatus[Broker] = trio.TASK_STATUS_IGNORED) -> None:
        workdir.remove_stale()
        folder = workdir.create()
        context = zmq.Context(io_threads=IO_THREADS if self.config.security.keys_dir else 1)
        try:
            ingest_security, control_security, worker_keys = self.secure(context, folder)
            if self.insecure_network:
                log.warning(
                    "security.allow_insecure_network: %s reachable from the network without "
                    "camera keys: anyone who reaches them can publish video for any camera "
                    "and answer for it (set security.keys_dir)",
                    ", ".join(self.config.network_endpoints()),
                )
            # Workers on this host publish over ipc://, which is faster than tcp.
            local = f"ipc://{folder}/ingest.ipc"
            socket, self.ingest_endpoints = ingest.bind(
                context,
                [*self.config.ingest.endpoints, local],
                ingest.largest_frame_limit(self.config),
                ingest_security,
            )
            for endpoint in self.ingest_endpoints:
                log.info("ingest bound on %s", endpoint)
            control_local = f"ipc://{folder}/control.ipc"
            self.control_endpoints = self.control.bind(
                context,
                [*self.config.control.endpoints, control_local],
                control_security,
                self.keys,
            )
            for endpoint in self.control_endpoints:
                log.info("control bound on %s", endpoint)
            if self.analytics is not None:
                feed = self.analytics.bind(context, str(folder))
                self.hub.hooks.frame = feed.publish
            listeners = await self.server.listen()
            self.port = self.server.port
            async with trio.open_nursery() as nursery:
                if self.keys is not None:
                    self.start_curve(nursery, socket)
                await nursery.start(self.control.run, name="control")
                await nursery.start(self.server.deriver.run, name="derive")
                nursery.start_soon(self.server.serve, listeners, name="server")
                if self.server.certificates is not None:  # reloaded on change and SIGHUP
                    nursery.start_soon(
                        self.faults.keep_running,
                        "tls_reload",
                        self.server.certificates.watch,
                        name="tls-reload",
                    )
                if self.analytics is not None:
                    await nursery.start(self.analytics.run, name="analytics")
                nursery.start_soon(
                    ingest.run_ingest,
                    socket,
                    self.hub,
                    self.ingest_stats,
                    self.config.ingest.max_frame_bytes,
                    self.observe_latency,
                    self.faults,
                    self.config.ingest.max_width,
                    self.config.ingest.max_height,
                    self.keys,
                    name="ingest",
                )
                nursery.start_soon(
                    self.faults.keep_running,
                    "offline",
                    offline.watch,
                    self.watcher,
                    self.faults,
                    name="offline-monitor",
                )
                supervised = [camera for camera in self.config.cameras if camera.supervised]
                if supervised:
                    self.supervisor = Supervisor(
                        self.config.workers,
                        local,
                        self.log_level,
                        control=control_local,
                        on_exit=self.control.worker_exited,
                        heartbeat=self.config.control.heartbeat_interval,
                        silent_for=self.control.silent_for,
                        lost_after=self.config.control.lost_after,
                        faults=self.faults,
                        extra_args=worker_keys,
                    )
                    nursery.start_soon(self.supervisor.run, supervised, name="supervisor")
                task_status.started(self)
        finally:
            context.destroy(linger=0)
            shutil.rmtree(folder, ignore_errors=True)

    def secure(
        self, context: zmq.Context[zmq.Socket[bytes]], folder: Path
    ) -> tuple[dict[int, int | bytes] | None, dict[int, int | bytes] | None, dict[str, list[str]]]:
        """With ``security.keys_dir``: load the broker's key and the camera keys, make a
        throw-away key pair for each supervised worker, and bind the ZAP handler (before
        any CURVE socket). Returns the ingest and control socket options and each
        supervised worker's key arguments; without keys_dir, nothing."""
        if not self.config.security.keys_dir:
            return None, None, {}
        keys_dir = Path(self.config.security.keys_dir)
        _, secret = keyfiles.load_secret(keyfiles.broker_secret(keys_dir))
        broker_key = keyfiles.broker_public(keys_dir)
        keyfiles.load_public(broker_key)  # workers get it: it must be there and sound
        refusals = curve.Refusals(
            {curve.INGEST: self.ingest_stats.errors, curve.CONTROL: self.control.errors}
        )
        self.keys = curve.CameraKeys(keys_dir, refusals)
        supervised = [camera.id for camera in self.config.cameras if camera.supervised]
        worker_keys = {}
        for camera, (public, secret_file) in curve.supervised_keys(
            folder / "keys", supervised
        ).items():
            self.keys.add_fixed(public, camera)
            worker_keys[camera] = ["--broker-key", str(broker_key), "--key", str(secret_file)]
        self.keys.reload()
        self.zap = curve.bind_zap(context)
        return (
            curve.server_options(secret, curve.INGEST),
            curve.server_options(secret, curve.CONTROL),
            worker_keys,
        )

    def start_curve(self, nursery: trio.Nursery, ingest_socket: zmq.Socket[bytes]) -> None:
        """The ZAP handler, the key watcher and the handshake counters."""
        keys = self.keys
        assert keys is not None and self.zap is not None and self.control.socket is not None
        zap = TrioSocket(self.zap, sends=True)
        keep_running = self.faults.keep_running
        nursery.start_soon(keep_running, "zap", curve.serve_zap, zap, keys, name="zap")
        nursery.start_soon(keep_running, "keys", curve.watch_keys, keys, name="keys")
        for domain, socket in (
            (curve.INGEST, ingest_socket),
            (curve.CONTROL, self.control.socket),
        ):
            nursery.start_soon(
                curve.watch_handshakes,
                curve.monitor(socket),
                domain,
                keys.refused,
                self.faults,
                name=f"handshakes:{domain}",
            )

    def forget(self, camera_id: str) -> None:
        """A camera the hub removed (an expired session): drop what is kept per camera."""
        self.metrics.forget(camera_id)
        if self.analytics is not None:
            self.analytics.results.forget(camera_id)

    def observe_latency(self, camera_id: str, seconds: float) -> None:
        self.metrics.latency.labels(camera_id).observe(seconds)

    def worker_restarts(self) -> dict[str, int]:
        return dict(self.supervisor.restarts) if self.supervisor else {}

    def health(self) -> dict[str, object]:
        cameras = self.hub.cameras.values()
        return {
            "status": "ok",
            "uptime_s": round(time.monotonic() - self.started_at, 1),
            "cameras": len(cameras),
            "cameras_online": sum(camera.online for camera in cameras),
            "clients": self.hub.client_count,
            "ingest": self.ingest_stats.as_dict(),
            "http_errors": {str(code): n for code, n in self.server.http_errors.items()},
            "slow_client_disconnects": self.server.slow_disconnects,
            "worker_restarts": self.worker_restarts(),
            "control": self.control.health(),
            "faults": self.faults.as_dict(),
            "tasks": introspect.task_count(),  # a soak watches these two for leaks
            "open_files": introspect.open_files(),
            "camera_keys": self.keys is not None,
            "insecure_network": self.insecure_network,
            **({"analytics": self.analytics.health()} if self.analytics is not None else {}),
        }
