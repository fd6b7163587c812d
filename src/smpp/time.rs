//! (receipt/time/session: being written)
