//! Accepts control connections and forwards requests to the tracker.
