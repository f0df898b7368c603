//! Replay
