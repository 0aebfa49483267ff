//! umail-store
