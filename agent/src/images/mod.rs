//! The image store: pull from registries, import archives, keep blobs and
//! unpacked layers, garbage-collect.

pub mod unpack;
