//! (codec: being written)
