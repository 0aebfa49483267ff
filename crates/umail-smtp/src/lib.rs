//! umail-smtp
