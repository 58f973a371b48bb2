"""Camera workers: capture, encode and publish frames to the broker over ZeroMQ, one
process per camera (``camera-worker``).

- `cameras.worker`: the frame loop (`Worker`, its pacing, `Stop`) and ``main``;
- `cameras.cli`: the command line, checked into a `cameras.cli.WorkerOptions`;
- `cameras.commands`: what the broker can ask over the control channel;
- `cameras.link`: the worker's end of that channel (hello, heartbeats, liveness);
- `cameras.sources`: where frames come from, one module per kind;
- `cameras.adjust`, `cameras.encoding`: image settings in software, and encoders.

The contracts with the broker (frame codec, control messages, the settings table, the
latency stamp) are `broker.protocol`, pure and light: the worker imports them and
`broker.support`'s pure helpers, never the broker's runtime (trio, the server).
"""
