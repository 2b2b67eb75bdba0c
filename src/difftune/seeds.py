"""Seeds derived from a run's seed and indices (epoch, image), the same on every platform."""

_MIX = 0x9E3779B97F4A7C15  # 2^64 / golden ratio: spreads nearby integers apart


def mix_seed(*values: int) -> int:
    """A 63-bit seed from integers (a fixed, platform-independent mix, unlike `hash`)."""
    h = 0
    for v in values:
        h = ((h ^ (int(v) & (2**64 - 1))) * _MIX + 1) % 2**64
    return h % 2**63
