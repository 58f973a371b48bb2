"""Hypothesis strategies more than one fuzz target draws from."""

from __future__ import annotations

from hypothesis import strategies as st

# Anything msgpack can carry, hostile to a decoder: huge and negative ints, non-finite
# floats, bytes where text is expected, nesting, maps with odd keys.
msgpack_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(st.characters(exclude_categories=["Cs"]), max_size=20)
    | st.binary(max_size=20)
)
msgpack_values = st.recursive(
    msgpack_scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=8) | st.binary(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)

# JSON as json.loads gives it to the broker: huge ints, inf (for 1e400), lone surrogates
# (for "\ud800"), long strings.
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=12)
    | st.sampled_from(["\ud800", "a\udfffb", "", "x" * 65])
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


def mutate_bytes(draw: st.DrawFn, data: bytes, most: int = 3) -> bytes:
    """``data`` with 1 to ``most`` byte-level mutations: a bit flipped, a byte set to an
    interesting value, bytes inserted or deleted, the rest cut off."""
    buffer = bytearray(data)
    for _ in range(draw(st.integers(1, most))):
        if not buffer:
            buffer += draw(st.binary(min_size=1, max_size=8))
            continue
        at = draw(st.integers(0, len(buffer) - 1))
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        if op == "flip":
            buffer[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            buffer[at] = draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80, 0xC1, 0xDC, 0xDE, 0xDF]))
        elif op == "insert":
            buffer[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del buffer[at : at + draw(st.integers(1, 8))]
        else:
            del buffer[at:]
    return bytes(buffer)
