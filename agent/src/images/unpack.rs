//! Safe layer extraction (being written).
