//! Skiff's cloud adapters.
//!
//! Built so far: nothing; the `CloudProvider` trait and its AWS, Azure and
//! local implementations arrive with the cloud-bursting issue.
