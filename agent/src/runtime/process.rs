//! Process runtime (to be written).
