"""The retention window behind next.jpg: bounded by count, by age, and by one memory
cap for the whole broker."""

from __future__ import annotations

from broker.config import RetentionConfig as Retention
from broker.core.camera import CameraInfo
from broker.core.frame import Frame
from broker.core.hub import Hub


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def frame(camera: str, seq: int, at: float, size: int = 1000) -> Frame:
    # Captured as it arrives (in step with our clock): the hub drops stale frames.
    return Frame(camera, seq, at, 8, 8, "jpeg", b"\xff\xd8\xff" + bytes(size - 3), at)


def hub(retention: Retention, clock: Clock) -> Hub:
    cameras = [CameraInfo("a", "A", 8, 8), CameraInfo("b", "B", 8, 8)]
    return Hub(cameras, offline_after=5, retention=retention, clock=clock)


def test_window_is_bounded_by_count_and_served_in_order() -> None:
    clock = Clock()
    h = hub(Retention(frames=3, max_age=60, max_bytes=10**6), clock)
    for seq in range(5):
        h.publish(frame("a", seq, clock.now))
    camera = h.camera("a")
    assert [f.seq for f in camera.recent] == [2, 3, 4]
    assert h.retained_bytes == 3000
    oldest, after_3 = h.next_after(camera, -1), h.next_after(camera, 3)
    assert oldest is not None and oldest.seq == 2  # the oldest kept
    assert after_3 is not None and after_3.seq == 4
    assert h.next_after(camera, 4) is None


def test_no_frame_older_than_the_ttl_is_served() -> None:
    clock = Clock()
    h = hub(Retention(frames=10, max_age=2.0, max_bytes=10**6), clock)
    h.publish(frame("a", 0, clock.now))
    clock.now += 1.5
    h.publish(frame("a", 1, clock.now))
    clock.now += 1.0  # frame 0 is 2.5 s old, frame 1 1.0 s
    served = h.next_after(h.camera("a"), -1)
    assert served is not None and served.seq == 1
    clock.now += 1.5
    assert h.next_after(h.camera("a"), -1) is None
    assert h.retained_bytes == 0


def test_memory_cap_covers_all_cameras_and_evicts_the_oldest_first() -> None:
    clock = Clock()
    h = hub(Retention(frames=100, max_age=60, max_bytes=5000), clock)
    for seq in range(4):
        clock.now += 0.1
        h.publish(frame("a", seq, clock.now))
        clock.now += 0.1
        h.publish(frame("b", seq, clock.now))
    assert h.retained_bytes <= 5000
    kept = sorted((f.received_at, f.camera, f.seq) for c in h.cameras.values() for f in c.recent)
    assert [(c, s) for _, c, s in kept] == [("b", 1), ("a", 2), ("b", 2), ("a", 3), ("b", 3)]


def test_placeholders_are_not_retained_and_removing_a_camera_frees_its_frames() -> None:
    clock = Clock()
    h = hub(Retention(), clock)
    h.publish(frame("a", 0, clock.now))
    h.publish_placeholder(h.camera("a"), frame("a", 0, clock.now))
    assert len(h.camera("a").recent) == 1
    subscriber = h.subscribe("a", "client", 2)
    h.remove_camera(h.camera("a"))
    assert h.retained_bytes == 0 and subscriber.closed and "a" not in h.cameras
