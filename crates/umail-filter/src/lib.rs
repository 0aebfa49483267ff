//! umail-filter
