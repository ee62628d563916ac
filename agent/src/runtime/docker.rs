//! Docker runtime (to be written).
