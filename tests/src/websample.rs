//! websample processes and images for tests (to be written).
