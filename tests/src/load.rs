//! Load generator (to be written).
